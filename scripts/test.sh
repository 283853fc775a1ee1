#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set up the host, then formatting,
# lints and every test (including those that build images and boot VMs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-host.sh
scripts/setup-libvirt.sh
# Incremental compilation only helps rebuilds after edits; here it would
# add ~1 GiB to the target directory, on the disk the images need.
export CARGO_INCREMENTAL=0
target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target"
echo "== free disk space for $target: $(df -h --output=avail "$target" | tail -1 | tr -d ' ') (the suite needs about 15 GiB: the build 3, its images 10, their copies in libvirt 2)"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== benchmarks in their smoke mode (every step once: a broken benchmark fails CI; the numbers mean little)"
# The image build benchmark first: it builds into an empty store of its
# own (2 GiB for a while), which fits before the tests fill the disk with
# their images and snapshots (CI's disk had 1.8 GiB left after them).
SMOKE=1 bench/image-build.sh
echo "== cargo test"
# Tests append their robustness figures (the secrets scan, ...) here;
# printed at the end.
robustness="$target/tmp/robustness.txt"
rm -f "$robustness"
cargo test --locked --workspace --no-fail-fast
echo "== the cluster benchmarks in their smoke mode"
# The store the tests filled, so that images (and snapshots) they share
# are not built again.
TESTBED_STORE="$(realpath "$target")/tmp/store" SMOKE=1 bench/cluster.sh
TESTBED_STORE="$(realpath "$target")/tmp/store" SMOKE=1 bench/containers.sh
echo "== a testbed without libvirt (cargo build --no-default-features)"
# Its own target directory: the default build's binary stays as the tests
# built it. The driver, a pure API client, links no libvirt either.
if cargo tree --locked -p testbed-driver | grep -q ' virt v'; then
    echo "testbed-driver depends on the virt crate" >&2
    exit 1
fi
cargo build --locked -p testbed --no-default-features --target-dir "$target/without-libvirt"
if "$target/without-libvirt/debug/testbed" up examples/slurm --backend libvirt 2> "$target/without-libvirt/up.err"; then
    echo "up --backend libvirt succeeded without libvirt" >&2
    exit 1
fi
grep -q "built without libvirt" "$target/without-libvirt/up.err" || {
    cat "$target/without-libvirt/up.err" >&2
    exit 1
}
echo "ok: $(cat "$target/without-libvirt/up.err")"
echo "== robustness (figures the tests recorded)"
if [[ -s $robustness ]]; then
    sed 's/^/robustness: /' "$robustness"
else
    echo "robustness: no figures recorded" >&2
    exit 1
fi
