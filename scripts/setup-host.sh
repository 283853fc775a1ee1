#!/usr/bin/env bash
# Installs what testbed needs on a Debian 12 host: the Debian packages listed
# in scripts/host-packages.txt. As root it runs apt-get; otherwise it prints
# the exact command to run. It never touches a host that already has
# everything, so it is cheap to call before every run.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

mapfile -t wanted < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$here/host-packages.txt" | grep -v '^$' || true)

missing=()
for pkg in "${wanted[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        echo "setup: installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "setup: these Debian packages are missing; install them with:" >&2
        echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo is not installed; install a Rust toolchain (rustup, stable >= 1.85) and re-run" >&2
    exit 1
fi

# The container backend's engine, configured for this host.
"$here/setup-podman.sh"
