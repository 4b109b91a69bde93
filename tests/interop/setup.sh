#!/usr/bin/env bash
# Installs the real OpenID Connect provider (oidc-provider, pinned in package-lock.json) that
# tests/interop.rs runs against. Without it those tests skip with a message.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v npm >/dev/null; then
    echo "tests/interop/setup.sh: npm not found; the interop tests will be skipped" >&2
    exit 0
fi
npm ci --no-audit --no-fund
