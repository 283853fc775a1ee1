#!/usr/bin/env bash
# The Python package's own tests, against a fake supervisor: no VM, no
# container, no network. Makes a fresh virtual environment, installs the
# package into it as a user does (`pip install ./python`, from a copy, so
# that the build leaves nothing in the work tree and no stale build/ folder
# is installed), and runs pytest on python/tests. Arguments go to pytest.
#
# Needs Debian's python3-venv, python3-setuptools, python3-wheel,
# python3-pytest and python3-testinfra (scripts/host-packages.txt): the
# environment sees the system's packages, so pip builds and installs with
# --no-index --no-build-isolation and needs no network. $PYTHON picks
# another interpreter (default: Debian's /usr/bin/python3, whose packages
# those are).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${PYTHON:-/usr/bin/python3}

if ! "$python" -c 'import venv, setuptools, wheel, pytest, testinfra' 2>/dev/null; then
    echo "python/run-tests.sh: $python lacks venv, setuptools, wheel, pytest or testinfra;" >&2
    echo "  scripts/setup-host.sh installs them (scripts/host-packages.txt)" >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m venv --system-site-packages "$work/venv"
mkdir "$work/src"
tar -C "$here" --exclude=./build --exclude='./src/*.egg-info' --exclude='__pycache__' -cf - . | tar -C "$work/src" -xf -
"$work/venv/bin/pip" install --quiet --no-index --no-build-isolation --disable-pip-version-check "$work/src"
cd "$here"
"$work/venv/bin/python" -m pytest -p no:cacheprovider "$@"
