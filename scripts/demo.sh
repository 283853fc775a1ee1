#!/usr/bin/env bash
# The main job, from a fresh clone: set up the host, build testbed, then
# validate and plan the bundled Slurm example.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-host.sh
cargo build --locked --release --bin testbed
tb="${CARGO_TARGET_DIR:-target}/release/testbed"
echo "== testbed check examples/slurm"
"$tb" check examples/slurm
echo "== testbed plan examples/slurm"
"$tb" plan examples/slurm
