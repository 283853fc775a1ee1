#!/usr/bin/env bash
# The main job, from a fresh clone: set up the host, build testbed and its
# guest agent, boot the bundled Slurm example (ctl, nfs, 4 compute nodes),
# drive it, run its test script, and take it down again.
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
"$tb" exec -f examples/slurm ctl -- sinfo
status=$("$tb" status examples/slurm --json)
echo "$status"
ready=$(grep -c '"state": "ready"' <<<"$status")
[[ $ready -eq 6 ]] || { echo "expected 6 ready nodes, got $ready" >&2; exit 1; }
state_dir=$(sed -n 's/^  "state_dir": "\(.*\)",$/\1/p' <<<"$status")
# The example's test script (examples/slurm/test.rhai) on the running
# cluster, which it leaves running; a JUnit report for CI systems.
"$tb" test examples/slurm --junit "${CARGO_TARGET_DIR:-target}/slurm-junit.xml"
"$tb" down examples/slurm
# Nothing left: no process mentions the state directory, which is gone.
if pgrep -af "$state_dir"; then echo "processes left behind" >&2; exit 1; fi
if [[ -e $state_dir ]]; then echo "$state_dir left behind" >&2; exit 1; fi
echo "demo: ok"
