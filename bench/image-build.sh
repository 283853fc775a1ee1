#!/usr/bin/env bash
# Image build benchmark (not a test): locks the Slurm example's roles, builds
# them cold into an empty store, runs plain mmdebstrap with the same package
# lists side by side, then builds again warm. Prints cold time as a ratio to
# plain mmdebstrap and the warm (cache hit) time.
#
# Needs root (mmdebstrap root mode) and scripts/setup-host.sh's packages.
# Other roles: bench/image-build.sh web=nginx db=postgresql
# SMOKE=1: one role of the base packages only, the debug build: what CI
# runs so that a broken benchmark fails CI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
if [[ ${SMOKE:-0} = 1 ]]; then
    cargo build --quiet --locked -p testbed-image --example image_bench
    exec "$CARGO_TARGET_DIR/debug/examples/image_bench" base=
fi
cargo build --quiet --release --locked -p testbed-image --example image_bench
exec "$CARGO_TARGET_DIR/release/examples/image_bench" "$@"
