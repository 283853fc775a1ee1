#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set up the host, then formatting,
# lints and every test (including those that build images and boot VMs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-host.sh
scripts/setup-libvirt.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked --workspace --no-fail-fast
