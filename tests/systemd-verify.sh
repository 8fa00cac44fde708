#!/usr/bin/env bash
# Installs geolocd into a scratch prefix and checks the installed units with
# systemd-analyze verify (the prefix makes ExecStart point at a real binary).
# usage: tests/systemd-verify.sh BUILD_DIR
set -euo pipefail
build=$(cd "$1" && pwd)
prefix=$(mktemp -d)
trap 'rm -rf "$prefix" "$build-verify"' EXIT
meson setup "$build-verify" "$(dirname "$0")/.." --prefix "$prefix" -Dtests=disabled >/dev/null
meson install -C "$build-verify" >/dev/null
units=$(find "$prefix" -name 'geolocd.service' -o -name 'geolocd.socket' -o -name 'geoloc-bridge.service')
[ -n "$units" ] || { echo "systemd-verify: no units were installed" >&2; exit 1; }
out=$(systemd-analyze verify $units 2>&1) || { echo "$out" >&2; exit 1; }
# verify exits 0 on some warnings: any output is a finding.
if [ -n "$out" ]; then echo "$out" >&2; exit 1; fi
echo "systemd-analyze verify: $(echo $units | xargs -n1 basename | tr '\n' ' ')ok"
