#!/usr/bin/env bash
# Install the Debian packages qkdtwin needs, skipping those already present (so a second
# run costs one dpkg query). Needs root; runs `apt-get update` only when something is missing.
set -euo pipefail
missing=()
for pkg in "$@"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "apt: all ${#@} packages present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "apt: missing ${missing[*]}; run as root (or install them) first" >&2
  exit 1
fi
echo "apt: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "apt: done"
