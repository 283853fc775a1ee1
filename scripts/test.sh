#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set up the host, then formatting,
# lints and every test (including those that build images and boot VMs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-host.sh
# Docker's daemon for the container test on docker (crates/testbed/tests/docker.rs).
scripts/setup-docker.sh
# The unprivileged users of the rootless, docker and libvirt tests
# (crates/testbed/tests/rootless.rs, docker.rs, libvirt_users.rs), then
# libvirt, whose polkit rule lets the group testbed-libvirt (one of them
# is in it) manage qemu:///system.
scripts/setup-users.sh
scripts/setup-libvirt.sh --polkit-group testbed-libvirt
# Incremental compilation only helps rebuilds after edits; here it would
# add ~1 GiB to the target directory, on the disk the images need.
export CARGO_INCREMENTAL=0
target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target"
echo "== free disk space for $target: $(df -h --output=avail "$target" | tail -1 | tr -d ' ') (the suite needs about 12 GiB: measured 11.2 at its peak, the build 2.2, the image store 7, their copies in libvirt 0.9)"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== cargo test and the benchmarks, in two lanes at once"
# Tests append their robustness figures (the secrets scan, ...) here;
# printed at the end.
robustness="$target/tmp/robustness.txt"
rm -f "$robustness"
cargo test --locked --workspace --no-run
# One `cargo test` runs its test binaries one after the other, and most of
# them wait on guests (timeouts in the scenarios, package downloads) with
# half the CPU idle (measured: 50 % on average over a run). So two lanes
# run at once, split where they cannot meet: the QEMU clusters of the
# testbed package in one; podman, libvirt, the image builds, every other
# crate and the benchmarks in the other (the podman and libvirt tests list
# the engines' global names, so they stay in one lane; `packages`, which
# builds into a store of its own, and `cache` (builds, a registry, no VM)
# are in the first for balance. Measured from fresh clones: on 2026-12-07
# (commit c30b4bc) the first lane took 49 min, the second 51 with docker,
# the users' tests, libvirt chaos and the benchmarks; `cache` was moved
# to the first after. Of 325fecb (the `ci` test added to the second lane,
# 109 s, and docker's moved to the first): the first 51.4 min, the second
# 46.8, the whole suite 55.7; docker went back to the second after (of
# c25704a: 46.3 and 47.6 min, the suite 51.3). Of 4ac906a, with the
# Slurm example's `--cold` test (~6 min) in the first lane and activation
# twice as fast, the first lane took 45.5 min. A
# test file not named here goes to the second lane. Each lane's lines are prefixed
# with its name. Every invocation selects `--workspace`, so features are
# unified as in the build above and nothing is compiled again.
qemu_tests=(cache chaos_vms cli cluster driver example_dask example_etcd example_gridengine packages python rootless snapshots test_verb)
mapfile -t other_tests < <(cargo metadata --locked --no-deps --format-version 1 | python3 -c '
import json, sys
qemu = set(sys.argv[1:])
names = {t["name"] for p in json.load(sys.stdin)["packages"] for t in p["targets"] if "test" in t["kind"]}
print("\n".join(sorted(names - qemu)))' "${qemu_tests[@]}")
lane() {
    local name=$1
    shift
    "$@" 2>&1 | sed -u "s/^/[$name] /"
    return "${PIPESTATUS[0]}"
}
qemu_lane() {
    cargo test --locked --workspace --no-fail-fast "${qemu_tests[@]/#/--test=}"
}
# The benchmarks run in their smoke mode (every step once: a broken
# benchmark fails CI; the numbers mean little, the more so beside the
# other lane). The image build benchmark first: it builds into an empty
# store of its own (1 GiB for a while), which fits before the tests fill
# the disk with their images and snapshots (CI's disk once had 1.8 GiB
# left after them). The cluster benchmarks last, on the store the tests
# filled (the images and snapshots they share are not built again), with
# the very testbed the tests use: a `cargo build` of it here would build
# the agent without the tests' dev-dependencies, and the agent's digest is
# part of every image key.
other_lane() {
    local rc=0 store
    store="$(realpath "$target")/tmp/store"
    echo "== the image build benchmark"
    SMOKE=1 bench/image-build.sh || rc=1
    cargo test --locked --workspace --no-fail-fast --lib --bins "${other_tests[@]/#/--test=}" || rc=1
    cargo test --locked --workspace --no-fail-fast --doc || rc=1
    echo "== the cluster benchmarks"
    TESTBED_BIN="$target/debug/testbed" TESTBED_STORE="$store" SMOKE=1 bench/cluster.sh || rc=1
    TESTBED_BIN="$target/debug/testbed" TESTBED_STORE="$store" SMOKE=1 bench/containers.sh || rc=1
    return $rc
}
lane_start=$SECONDS
lane qemu qemu_lane &
qemu_pid=$!
lane other other_lane &
other_pid=$!
rc=0
wait "$qemu_pid" || rc=1
echo "== the qemu lane ended after $((SECONDS - lane_start)) s"
wait "$other_pid" || rc=1
echo "== both lanes ended after $((SECONDS - lane_start)) s"
if ((rc != 0)); then
    echo "== a lane failed (search its output above for FAILED, 'panicked' and 'error')" >&2
    exit 1
fi
echo "== a testbed without libvirt (cargo build --no-default-features)"
# The same target directory (the dependencies are built already: only the
# workspace's crates are compiled again, and no second copy of every
# dependency takes the disk); the binary is copied aside and the tests'
# own binary copied back (building it again with `-p testbed` would unify
# features differently and compile again). The driver, a pure API client,
# links no libvirt either.
if cargo tree --locked -p testbed-driver | grep -q ' virt v'; then
    echo "testbed-driver depends on the virt crate" >&2
    exit 1
fi
without="$target/without-libvirt"
mkdir -p "$without"
cp "$target/debug/testbed" "$without/testbed.tests"
cargo build --locked -p testbed --no-default-features
cp "$target/debug/testbed" "$without/testbed"
cp --remove-destination "$without/testbed.tests" "$target/debug/testbed"
if "$without/testbed" up examples/slurm --backend libvirt 2> "$without/up.err"; then
    echo "up --backend libvirt succeeded without libvirt" >&2
    exit 1
fi
grep -q "built without libvirt" "$without/up.err" || {
    cat "$without/up.err" >&2
    exit 1
}
if ldd "$without/testbed" | grep -q libvirt; then
    echo "the testbed built without libvirt links libvirt" >&2
    exit 1
fi
echo "ok: $(cat "$without/up.err")"
echo "== robustness (figures the tests recorded)"
if [[ -s $robustness ]]; then
    sed 's/^/robustness: /' "$robustness"
else
    echo "robustness: no figures recorded" >&2
    exit 1
fi
