#!/usr/bin/env bash
# Installs what Vault needs to build and test, on Debian 12 as root. Idempotent.
#
# Each component owns one step in scripts/setup.d/ (run in name order), so that adding a
# component's needs never touches another's. Steps use the helpers below.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_updated=0

# apt_install PACKAGE...: installs the packages that are not installed yet.
apt_install() {
    local missing=() package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "${package%%/*}" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$package")
    done
    ((${#missing[@]})) || return 0
    if ((apt_updated == 0)); then
        apt-get update -qq
        apt_updated=1
    fi
    echo "setup: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

for step in scripts/setup.d/*.sh; do
    # shellcheck source=/dev/null
    source "$step"
done
