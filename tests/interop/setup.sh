#!/usr/bin/env bash
# Installs the real OpenID Connect provider (oidc-provider, pinned in package-lock.json) that
# tests/interop.rs runs against. Fails (exit 1) when it cannot: without it the interop tests
# fail under CI=true, and elsewhere skip, saying so.
set -euo pipefail
cd "$(dirname "$0")"
fail() {
    echo "tests/interop/setup.sh: FAILED: $*" >&2
    exit 1
}
command -v node >/dev/null || fail "node not found; install Node.js 18.12 or newer"
command -v npm >/dev/null || fail "npm not found; install Node.js 18.12 or newer (with npm)"
npm ci --no-audit --no-fund || fail "npm ci did not install oidc-provider (see npm's output above)"
[ -f node_modules/oidc-provider/package.json ] || fail "npm ci finished but node_modules/oidc-provider is missing"
echo "tests/interop/setup.sh: oidc-provider installed in $(pwd)/node_modules"
