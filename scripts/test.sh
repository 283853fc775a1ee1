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
echo "== cargo test and the benchmarks, in three lanes at once"
# Tests append their robustness figures (the secrets scan, ...) here;
# printed at the end.
robustness="$target/tmp/robustness.txt"
rm -f "$robustness"
cargo test --locked --workspace --no-run
# One `cargo test` runs its test binaries one after the other, and most of
# them wait on guests (timeouts in the scenarios, sleeps in the examples'
# jobs) with the CPU idle: in the two lanes of 2026-12-07, each test took as
# long as when it ran alone. So three lanes run at once, split where they
# cannot meet:
# - `engines`: every test that uses podman, docker or libvirt (they list
#   the engines' global names: containers, networks, domains, volumes, so
#   they never run beside each other), then the container benchmark (it
#   starts podman containers of its own);
# - `qemu`: QEMU clusters of the testbed package, after the image build
#   benchmark (it builds into an empty store of its own, 1 GiB for a
#   while, which fits before the tests fill the disk with their images and
#   snapshots; CI's disk once had 1.8 GiB left after them);
# - `rest`: every other test (the other QEMU clusters, the users' tests,
#   the image builds, every other crate's tests, the doc tests), then the
#   cluster benchmark, on the store the tests filled (the images and
#   snapshots it shares with them are not built again), with the very
#   testbed the tests use: a `cargo build` of it here would build the agent
#   without the tests' dev-dependencies, and the agent's digest is part of
#   every image key.
# A test that uses podman, docker or libvirt must be named in
# `engine_tests`; a test file named nowhere goes to `rest`. The QEMU tests
# only ever look at their own clusters (their state folders), so they may
# run in two lanes. Measured from fresh clones: with two lanes, of
# c25704a 46.3 and 47.6 min, the suite 51.3; of 4ac906a the first lane
# 45.5 min; with these three, of 74503d2 (faster activation too): qemu
# 32.2, engines 34.8, rest 36.0 min, the suite 39.5 (2372 s; the CPU was
# then busy nearly all the time, so a fourth lane would gain little).
# Each lane's lines are prefixed with its name. Every invocation
# selects `--workspace`, so features are unified as in the build above and
# nothing is compiled again.
qemu_tests=(cache cli cluster example_dask example_etcd snapshots test_verb)
engine_tests=(ci conformance containers containers_chaos docker libvirt libvirt_chaos libvirt_users)
mapfile -t rest_tests < <(cargo metadata --locked --no-deps --format-version 1 | python3 -c '
import json, sys
named = set(sys.argv[1:])
names = {t["name"] for p in json.load(sys.stdin)["packages"] for t in p["targets"] if "test" in t["kind"]}
print("\n".join(sorted(names - named)))' "${qemu_tests[@]}" "${engine_tests[@]}")
lane() {
    local name=$1
    shift
    (
        rc=0
        "$@" || rc=$?
        echo "== the $name lane ended after $((SECONDS - lane_start)) s"
        exit $rc
    ) 2>&1 | sed -u "s/^/[$name] /"
    return "${PIPESTATUS[0]}"
}
# The benchmarks run in their smoke mode (every step once: a broken
# benchmark fails CI; the numbers mean little, the more so beside the
# other lanes).
qemu_lane() {
    local rc=0
    echo "== the image build benchmark"
    SMOKE=1 bench/image-build.sh || rc=1
    cargo test --locked --workspace --no-fail-fast "${qemu_tests[@]/#/--test=}" || rc=1
    return $rc
}
rest_lane() {
    local rc=0 store
    store="$(realpath "$target")/tmp/store"
    cargo test --locked --workspace --no-fail-fast --lib --bins "${rest_tests[@]/#/--test=}" || rc=1
    cargo test --locked --workspace --no-fail-fast --doc || rc=1
    echo "== the cluster benchmark"
    TESTBED_BIN="$target/debug/testbed" TESTBED_STORE="$store" SMOKE=1 bench/cluster.sh || rc=1
    return $rc
}
engines_lane() {
    local rc=0 store
    store="$(realpath "$target")/tmp/store"
    cargo test --locked --workspace --no-fail-fast "${engine_tests[@]/#/--test=}" || rc=1
    echo "== the container benchmark"
    TESTBED_BIN="$target/debug/testbed" TESTBED_STORE="$store" SMOKE=1 bench/containers.sh || rc=1
    return $rc
}
lane_start=$SECONDS
rc=0
pids=()
for name in qemu rest engines; do
    lane "$name" "${name}_lane" &
    pids+=("$!")
done
for i in 0 1 2; do
    wait "${pids[$i]}" || rc=1
done
echo "== the three lanes ended after $((SECONDS - lane_start)) s"
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
