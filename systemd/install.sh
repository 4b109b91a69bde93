#!/bin/sh
# Installs cortexid as a systemd service. Run from the repository root as root, after
# `cargo build --release`. Idempotent: an existing /etc/cortexid/cortexid.toml is kept.
set -eu
# `cortexid` runs every command but `token` with `cortexid-agent`, which must sit next to it.
bin=${1:-target/release/cortexid}
for b in "$bin" "$(dirname "$bin")/cortexid-agent"; do
  [ -x "$b" ] || { echo "no binary at $b: run cargo build --release first" >&2; exit 1; }
done

install -m 0755 "$bin" /usr/local/bin/cortexid
install -m 0755 "$(dirname "$bin")/cortexid-agent" /usr/local/bin/cortexid-agent
install -m 0644 systemd/cortexid.service systemd/cortexid.socket /etc/systemd/system/
install -D -m 0644 systemd/cortexid.sysusers /usr/lib/sysusers.d/cortexid.conf
install -D -m 0644 systemd/cortexid.tmpfiles /usr/lib/tmpfiles.d/cortexid.conf
systemd-sysusers /usr/lib/sysusers.d/cortexid.conf
systemd-tmpfiles --create /usr/lib/tmpfiles.d/cortexid.conf
[ -f /etc/cortexid/cortexid.toml ] || install -m 0644 examples/cortexid.toml /etc/cortexid/cortexid.toml
systemctl daemon-reload

cat <<'MSG'
cortexid is installed. Next:
  1. edit /etc/cortexid/cortexid.toml (provider, identities, roles)
  2. put the client secret in /etc/cortexid/credentials/client-secret (mode 0600, root)
  3. cortexid check-config --config /etc/cortexid/cortexid.toml
  4. systemctl enable --now cortexid.socket cortexid.service
MSG
