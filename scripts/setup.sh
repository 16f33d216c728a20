#!/usr/bin/env bash
# Installs the system packages Vault needs to build and test, on Debian 12 as root.
# Idempotent: a second run changes nothing.
set -euo pipefail

packages=(build-essential pkg-config)

missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
