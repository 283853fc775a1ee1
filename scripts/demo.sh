#!/usr/bin/env bash
# The main job, from a fresh clone: set up the host, build testbed and its
# guest agent, then boot the bundled Slurm example (ctl + 4 compute nodes),
# drive it, and take it down again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-host.sh
cargo build --locked --release --bin testbed --bin testbed-agent
tb="${CARGO_TARGET_DIR:-target}/release/testbed"
# Whatever happens below, leave no VM running.
trap '"$tb" down examples/slurm >/dev/null 2>&1 || true' EXIT
set -x
"$tb" check examples/slurm
"$tb" up examples/slurm
"$tb" exec -f examples/slurm ctl -- ping -c1 compute3
"$tb" exec -f examples/slurm ctl -- systemctl is-active munge slurmctld
"$tb" status examples/slurm --json
"$tb" down examples/slurm
