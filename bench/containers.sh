#!/usr/bin/env bash
# Container density benchmark (not a test: it asserts nothing, it prints).
# One small role (the image's base packages only), side by side in one run:
#
#   (a) baseline: $NODES plain `podman run` containers of that role's
#       imported image with systemd as PID 1, on an internal network, until
#       every one reports `systemctl is-system-running` running/degraded;
#   (b) `testbed up --backend podman` of $NODES nodes of the role, to
#       all-ready (booted, agent connected, activated: host name, /etc/hosts,
#       SSH keys, ssh.service started);
#   (c) `testbed up --backend qemu` of the same composition at $VM_NODES
#       nodes (what this host can hold under TCG), to all-ready.
#
# After each is up and idle for $IDLE seconds: host memory per node, as the
# proportional set size (PSS) of the node's processes: for a container,
# every process in its PID namespace (systemd, the services, the agent) and
# its conmon processes; for a VM, its QEMU process. Pages shared between nodes (the
# image's files, a snapshot's RAM) count once, split between them.
# (The drop of MemAvailable, used before, was noise: it came out negative.)
#
# Environment: NODES (default 50), VM_NODES (default 4), IDLE (default 10),
# KEEP=1 (keep the work folder), TESTBED_STORE, TESTBED_STATE_DIR,
# CARGO_TARGET_DIR, TESTBED_BIN (a testbed binary to use instead of
# building one); SMOKE=1 runs every step once, small and quick (2
# containers, 1 VM, the debug build): what CI runs so that a broken
# benchmark fails CI.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
if [[ ${SMOKE:-0} = 1 ]]; then
    NODES=2 VM_NODES=1 IDLE=1
fi
if [[ -n ${TESTBED_BIN:-} ]]; then
    # A testbed built already (the agent beside it): scripts/test.sh passes
    # the one the tests use, so that no build runs beside them.
    tb=$(realpath "$TESTBED_BIN")
elif [[ ${SMOKE:-0} = 1 ]]; then
    cargo build --quiet --locked --bin testbed --bin testbed-agent
    tb=$(realpath "$CARGO_TARGET_DIR/debug/testbed")
else
    cargo build --quiet --release --locked --bin testbed --bin testbed-agent
    tb=$(realpath "$CARGO_TARGET_DIR/release/testbed")
fi
NODES=${NODES:-50}
VM_NODES=${VM_NODES:-4}
IDLE=${IDLE:-10}

work=$(mktemp -d /tmp/tb-bench-ct.XXXXXX)
comp=$work/dense
vms=$work/dense-vm
base_net=tb-bench-baseline
base_image=localhost/tb-bench-baseline:1

cleanup() {
    "$tb" down "$comp" >/dev/null 2>&1 || true
    "$tb" down "$vms" >/dev/null 2>&1 || true
    podman ps -a --filter label=tb-bench=baseline --format '{{.Names}}' |
        xargs -r podman rm --force --time 0 >/dev/null 2>&1 || true
    podman network rm "$base_net" >/dev/null 2>&1 || true
    podman image rm "$base_image" >/dev/null 2>&1 || true
    if [[ ${KEEP:-0} = 1 ]]; then
        echo "work folder kept: $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

say() { printf '%s\n' "$*" >&2; }
now_us() { local t=$EPOCHREALTIME; echo "${t/./}"; }
secs() { awk -v us="$1" 'BEGIN { printf "%.1f", us / 1e6 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
# The sum of the PSS (KiB) of the given processes.
pss_kib() {
    local pid sum=0 k
    for pid in "$@"; do
        k=$(awk '/^Pss:/ { print $2 }' "/proc/$pid/smaps_rollup" 2>/dev/null || true)
        sum=$((sum + ${k:-0}))
    done
    echo "$sum"
}
# The processes of the containers named on stdin: every process in each
# one's PID namespace (systemd, the services, exec sessions such as the
# agent) and its conmon processes (one per container and per exec session).
container_pids() {
    local name id pid ns p
    while read -r name; do
        read -r id pid < <(podman inspect --format '{{.Id}} {{.State.Pid}}' "$name")
        ns=$(readlink "/proc/$pid/ns/pid")
        for p in /proc/[0-9]*; do
            [[ $(readlink "$p/ns/pid" 2>/dev/null) == "$ns" ]] && echo "${p#/proc/}"
        done
        pgrep -f "conmon .*$id" || true
    done
}
# The QEMU processes of the cluster at $1.
vm_pids() { "$tb" status "$1" --json | sed -n 's/^ *"pid": \([0-9]*\).*/\1/p'; }
per_node_mib() { awk -v k="$1" -v n="$2" 'BEGIN { printf "%.0f", k / 1024 / n }'; }

write_comp() { # DIR COUNT
    mkdir -p "$1"
    cat >"$1/testbed.toml" <<EOF
[cluster]
name = "dense"
distro = "debian/bookworm"

[defaults]
memory = "256MiB"
cpus = 1

[roles.node]
count = $2

[networks.lan]
subnet = "10.79.0.0/24"
EOF
}
write_comp "$comp" "$NODES"
write_comp "$vms" "$VM_NODES"

say "== building the role's image (once)"
"$tb" build "$comp" >&2
tar=$("$tb" build "$comp" --json 2>/dev/null | awk -F'"' '/"dir"/ { print $4; exit }')/rootfs.tar.gz
if [[ ! -f $tar ]]; then
    say "cannot find the role's rootfs.tar.gz (got: $tar)"
    exit 1
fi

say "== (a) baseline: $NODES plain podman containers with systemd"
podman import --quiet "$tar" "$base_image" >/dev/null
podman network create --internal --disable-dns --subnet 10.80.0.0/24 "$base_net" >/dev/null
t0=$(now_us)
for i in $(seq 1 "$NODES"); do
    podman run --detach --pull never --name "tb-bench-$i" --hostname "n$i" \
        --label tb-bench=baseline --memory 256m --cpus 1 --systemd=always \
        --network "$base_net" "$base_image" /sbin/init >/dev/null
done
for i in $(seq 1 "$NODES"); do
    until state=$(podman exec "tb-bench-$i" systemctl is-system-running 2>/dev/null || true) &&
        [[ $state == running || $state == degraded ]]; do
        sleep 0.2
    done
done
t_base=$(($(now_us) - t0))
sleep "$IDLE"
# shellcheck disable=SC2046
mem_base=$(per_node_mib "$(pss_kib $(seq -f 'tb-bench-%.0f' 1 "$NODES" | container_pids))" "$NODES")
podman ps -a --filter label=tb-bench=baseline --format '{{.Names}}' | xargs -r podman rm --force --time 0 >/dev/null
podman network rm "$base_net" >/dev/null
podman image rm "$base_image" >/dev/null
sleep 2

say "== (b) testbed up --backend podman: $NODES nodes"
t0=$(now_us)
"$tb" up --backend podman "$comp" >/dev/null
t_ct=$(($(now_us) - t0))
ready=$("$tb" status "$comp" --json | grep -c '"state": "ready"' || true)
sleep "$IDLE"
# shellcheck disable=SC2046
mem_ct=$(per_node_mib "$(pss_kib $(podman ps --filter "label=org.testbed.state=$("$tb" status "$comp" --json | sed -n 's/^ *"state_dir": "\(.*\)",$/\1/p')" --format '{{.Names}}' | container_pids))" "$NODES")
"$tb" down "$comp" >/dev/null
sleep 2

say "== (c) testbed up --backend qemu: $VM_NODES nodes"
t0=$(now_us)
"$tb" up --backend qemu "$vms" >/dev/null
t_vm=$(($(now_us) - t0))
sleep "$IDLE"
# shellcheck disable=SC2046
mem_vm=$(per_node_mib "$(pss_kib $(vm_pids "$vms"))" "$VM_NODES")
"$tb" down "$vms" >/dev/null

printf '\n%-44s %10s %10s %14s\n' "" "nodes" "all ready" "PSS MiB/node"
printf '%-44s %10s %9ss %14s\n' "(a) plain podman run + systemd (baseline)" "$NODES" "$(secs "$t_base")" "$mem_base"
printf '%-44s %10s %9ss %14s\n' "(b) testbed up --backend podman" "$ready" "$(secs "$t_ct")" "$mem_ct"
printf '%-44s %10s %9ss %14s\n' "(c) testbed up --backend qemu" "$VM_NODES" "$(secs "$t_vm")" "$mem_vm"
printf '\n(b)/(a) time to all-ready: %sx (testbed adds import, networks, agent, activation)\n' "$(ratio "$t_ct" "$t_base")"
printf '(c)/(b) time per node: %sx; memory per node: %sx\n' \
    "$(awk -v c="$t_vm" -v b="$t_ct" -v nc="$VM_NODES" -v nb="$NODES" 'BEGIN { printf "%.1f", (c / nc) / (b / nb) }')" \
    "$(ratio "$mem_vm" "$(awk -v m="$mem_ct" 'BEGIN { print (m < 1 ? 1 : m) }')")"
