#!/usr/bin/env bash
# Installs everything imperium's test suite needs on a Debian 12 machine (as root).
# Idempotent: packages already present are not reinstalled.
#   - scripts/install-deps.d/*.txt : extra Debian packages, one per line
#   - scripts/install-deps.d/*.sh  : extra idempotent install steps (run with bash)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" != 0 ]; then
  echo "install-deps.sh: run as root (it uses apt-get)" >&2
  exit 1
fi
# keep package postinst scripts from starting system services
[ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }
pkgs=(uwsgi-core uwsgi-plugin-python3 uwsgi-plugin-emperor-pg python3 inotify-tools procps)
shopt -s nullglob
for f in "$here"/install-deps.d/*.txt; do
  while read -r p; do
    p=${p%%#*}; p=$(echo "$p" | xargs)
    [ -n "$p" ] && pkgs+=("$p")
  done <"$f"
done
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps.sh: installing ${missing[*]}"
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
for s in "$here"/install-deps.d/*.sh; do
  bash "$s"
done
echo "install-deps.sh: done"
