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
set +x
# The committed lock pins every package version. A mirror keeps only the
# current ones, so the build takes what it no longer has from the store's
# package cache or a snapshot archive at the lock's snapshot point
# (docs/images.md, "Where packages come from"). Where no source has them
# (a machine that reaches only the current mirror), say so, name them, and
# only then re-lock: each changed version is listed, and the new lock is in
# the working tree for `git diff` to show.
echo "demo: can every package examples/slurm/testbed.lock pins still be had?"
if "$tb" lock --check examples/slurm; then
    echo "demo: yes: the images are built from the lock as committed"
else
    echo "demo: no source this machine reaches has the packages named above, so the committed lock cannot be built here"
    echo "demo: re-locking examples/slurm against the archive as it is today (the changes are listed below; git diff examples/slurm/testbed.lock shows them)"
    "$tb" lock --update examples/slurm
fi
set -x
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
