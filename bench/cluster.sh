#!/usr/bin/env bash
# Cluster benchmark (not a test: it asserts no timing, it only prints).
# Measures side by side, in one run, on copies of examples/slurm:
#
#   (a) a bare qemu-system-x86_64 boot of the compute role's store entry
#       (testbed's flags minus NICs and agent channel) until the serial
#       console shows the `login:` prompt (getty, i.e. multi-user);
#   (b) `testbed up --cold --scale compute=1` of a one-node composition (the
#       example without its ctl and nfs roles, so the same compute image) to
#       all-ready;
#   (b') the same `up` from the role's memory snapshot (docs/snapshots.md),
#       and the restore itself (the supervisor log's "restored ... in Xs");
#   (a), (b) and (b') alternate $BOOTS times and the medians are compared;
#   (c) `testbed up --cold` of the whole example to all-ready, once, then
#   (c') `testbed up` of it from snapshots;
#   then, on (c') left idle for $IDLE seconds, the host RSS and PSS of its
#   QEMU processes per node, and the round trip of `testbed exec NODE -- true`
#   against `testbed ssh NODE -- true` and plain `ssh -F CONFIG NODE true`;
#   (d) on (c'), `testbed snapshot save` of the whole running cluster, a
#   crash of $NODE, and `testbed snapshot restore` back to the save;
#   with MANY=N (default 0: skipped), N nodes of the compute role from its
#   snapshot at once, and their RSS and PSS per node.
#
# The snapshots are made first by one `up` of each composition (timed and
# printed, not part of the rounds).
#
# Prints every time and its ratio against the targets: cold up of one node
# <= 1.25x one bare boot; cold up of N nodes <= 1.25 x ceil(N/cores) x one
# bare boot; up of one node from its snapshot <= 0.2x its cold up, the
# restore <= 0.5 s; up of the example from snapshots <= 40 s; the restore
# of the whole running example <= 15 s; exec >= 5x
# faster than ssh (p50); <= 120 MiB PSS per idle node from snapshots.
#
# SMOKE=1 runs every step once, quickly (BOOTS=1, RUNS=3, IDLE=1, no wait for
# a quiet host, no cold up of the whole example, its snapshots made by its
# timed up, the example with 2 compute nodes rather than 4, the debug
# build, the example locked anew as the tests lock it rather than its
# committed lock): what CI runs so that a broken benchmark fails CI. Its
# numbers mean little.
#
# Needs root for the first image build (mmdebstrap), like `testbed build`.
# Before each boot it waits until no qemu-system process runs on the host
# (other VMs would distort the numbers), at most $QUIET_WAIT seconds.
#
# A sampler notes any other qemu-system process seen during a measurement.
#
# Environment: BOOTS (rounds of (a), (b) and (b'), default 5), RUNS (round
# trips per method, default 50), IDLE (seconds, default 10), NODE (default
# compute1), QUIET_WAIT (default 1800), MANY (default 0), SMOKE,
# KEEP=1 (keep the work folder with the console logs), TESTBED_STORE,
# TESTBED_STATE_DIR, CARGO_TARGET_DIR, TESTBED_BIN (a testbed binary to use
# instead of building one).
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME and printf with a "." decimal point
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
SMOKE=${SMOKE:-0}
# The whole example's node count: as it is, or in smoke mode two compute
# nodes (4 nodes, not 6: CI time).
full_scale=()
if [[ $SMOKE = 1 ]]; then
    BOOTS=1 RUNS=3 IDLE=1 QUIET_WAIT=0 MANY=0 profile=debug
    full_scale=(--scale compute=2)
else
    profile=release
fi
BOOTS=${BOOTS:-5}
RUNS=${RUNS:-50}
IDLE=${IDLE:-10}
NODE=${NODE:-compute1}
QUIET_WAIT=${QUIET_WAIT:-1800}
MANY=${MANY:-0}
QEMU=${TESTBED_QEMU:-qemu-system-x86_64}

if [[ -n ${TESTBED_BIN:-} ]]; then
    # A testbed built already (the agent beside it): scripts/test.sh passes
    # the one the tests use, so that no build runs beside them.
    tb=$(realpath "$TESTBED_BIN")
elif [[ $profile = release ]]; then
    cargo build --quiet --release --locked --bin testbed --bin testbed-agent
    tb=$(realpath "$CARGO_TARGET_DIR/release/testbed")
else
    cargo build --quiet --locked --bin testbed --bin testbed-agent
    tb=$(realpath "$CARGO_TARGET_DIR/debug/testbed")
fi

work=$(mktemp -d /tmp/tb-bench.XXXXXX)
full=$work/full # the example as is: ctl + 4 compute
one=$work/one   # the example without ctl and nfs: one compute node
bare_pid=
sampler_pid=

cleanup() {
    if [[ -n $bare_pid ]]; then kill "$bare_pid" 2>/dev/null || true; fi
    if [[ -n $sampler_pid ]]; then kill "$sampler_pid" 2>/dev/null || true; fi
    "$tb" down "$one" >/dev/null 2>&1 || true
    "$tb" down "$full" >/dev/null 2>&1 || true
    if [[ ${KEEP:-0} = 1 ]]; then
        echo "work folder kept: $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

say() { printf '%s\n' "$*" >&2; }
# Microseconds since the epoch, without forking.
now_us() { local t=$EPOCHREALTIME; echo "${t/./}"; }
secs() { awk -v us="$1" 'BEGIN { printf "%.1f", us / 1e6 }'; }
ms() { awk -v us="$1" 'BEGIN { printf "%.0f", us / 1e3 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# Other engineers' VMs share these two cores: boot only on a quiet host.
wait_quiet() {
    local waited=0
    while pgrep -f qemu-system >/dev/null; do
        if ((waited >= QUIET_WAIT)); then
            say "WARNING: qemu-system processes still running after ${QUIET_WAIT}s; measuring anyway (numbers distorted)"
            notes+=("$1 ran while other VMs were running: $(pgrep -fc qemu-system) qemu-system processes")
            return
        fi
        ((waited == 0)) && say "waiting for other VMs to finish before $1 ..."
        sleep 20
        waited=$((waited + 20))
    done
    # Compilers and tests without VMs compete for the cores too.
    loads+=("$(cut -d' ' -f1 /proc/loadavg)")
}
loads=()
notes=()

# Our own QEMUs: the bare one, and the clusters' (their command lines name
# their state directories, docs/cluster.md). Anything else that runs while
# we measure is recorded with the phase it overlapped.
state_root=${TESTBED_STATE_DIR:-${XDG_RUNTIME_DIR:+$XDG_RUNTIME_DIR/testbed}}
state_root=${state_root:-/tmp/testbed-$(id -u)}
echo setup >"$work/phase"
while sleep 5; do
    phase=$(cat "$work/phase")
    pgrep -af qemu-system | grep -v -e 'guest=bare,' -e "$state_root/slurm-" |
        while read -r pid _; do echo "$phase|$pid"; done
done >>"$work/foreign" 2>/dev/null &
sampler_pid=$!
phase() { echo "$1" >"$work/phase"; }

# --- the two compositions ------------------------------------------------
cp -r examples/slurm/. "$full"
# Every file of the example (templates, scripts, the lock), then the ctl
# and nfs roles dropped (compute mounts /home only on first use, which
# nothing here makes): the compute role and everything else stay byte for byte,
# so its image (a function of packages, files and the lock, never of role
# names or counts) is the same store entry.
cp -r examples/slurm/. "$one"
# (A line in brackets inside a """ string, such as a unit's [Mount], is
# no table header.)
awk '!instr && /^\[/ { skip = ($0 ~ /^\[roles\.(ctl|nfs)[].]/) }
     !skip { print }
     { if (gsub(/"""/, "&") % 2) instr = !instr }' examples/slurm/testbed.toml |
    sed 's/^name = "slurm"$/name = "slurm-one"/' >"$one/testbed.toml"
# slurmd needs a SlurmctldHost; point it at the node itself.
sed 's/roles\.ctl\[0\]/roles.compute[0]/g' examples/slurm/slurm.conf.j2 >"$one/slurm.conf.j2"
if [[ $SMOKE = 1 ]]; then
    # Without the committed lock, like the tests' copies of the example
    # (crates/test-support/src/examples.rs): locked against today's archive,
    # so the images are the ones the tests built into the same store and
    # nothing is built beside the tests (the committed lock's images took
    # 2 minutes of CI). The full runs keep the committed lock.
    rm -f "$full/testbed.lock" "$one/testbed.lock"
fi

# --- build first (not measured) -------------------------------------------
say "building images (a store hit costs nothing) ..."
"$tb" build "$full" >&2
"$tb" build "$one" >&2
# The compute role's store entry; `build --json` is an array of objects.
entry=$("$tb" build "$full" --json |
    awk -F'"' '/"dir":/ { dir = $4 } /"role":/ { role = $4 }
               /}/ { if (role == "compute") print dir; dir = ""; role = "" }')
[[ -f $entry/kernel ]] || { say "no store entry for role compute: '$entry'"; exit 1; }
one_entry=$("$tb" build "$one" --json | awk -F'"' '/"dir":/ { print $4 }')
[[ $one_entry = "$entry" ]] || notes+=("the one-node composition's image differs from the example's compute image")
# Memory and vCPUs of $NODE (a compute node), as the plan gives them.
"$tb" plan "$full" "${full_scale[@]}" --json >"$work/plan.json"
node_field() {
    awk -F'[:,]' -v node="\"$NODE\"" -v key="\"$1\"" '
        $1 ~ /"name"$/ { gsub(/ /, "", $2); found = ($2 == node) }
        found && $1 ~ key { gsub(/ /, "", $2); print $2; exit }' "$work/plan.json"
}
mem=$(node_field memory_mib)
cpus=$(node_field cpus)
[[ -n $mem && -n $cpus ]] || { say "node $NODE is not in the example's plan"; exit 1; }
nodes=$(grep -c '"index":' "$work/plan.json")
cores=$(nproc)

# testbed's choice of accelerator (docs/qemu.md): KVM only when /dev/kvm
# opens read-write and the CPU advertises vmx or svm.
if [[ -r /dev/kvm && -w /dev/kvm ]] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
    accel=(-accel kvm -cpu host)
    accel_name=KVM
else
    accel=(-accel tcg,thread=multi)
    accel_name=TCG
fi

# --- (a) one bare QEMU boot to the login prompt ---------------------------
# The flags of crates/runtime/tests/snapshots/two-nics-tcg.argv without the
# NICs, the agent's virtio-serial port and QMP; the serial console goes to
# stdout, where a perl filter (perl-base is Essential in Debian) stamps each
# line with the seconds since QEMU started and exits at `login:`.
bare_boot() {
    local log=$work/bare-console-$1.log t0
    wait_quiet "the bare boot"
    phase "the bare boots"
    t0=$(now_us)
    "$QEMU" -name guest=bare,debug-threads=on -nodefaults -no-user-config -no-reboot \
        -display none -msg timestamp=on -machine q35 "${accel[@]}" \
        -m "${mem}M" -smp "$cpus" \
        -kernel "$entry/kernel" -initrd "$entry/initramfs" \
        -append 'console=ttyS0 panic=-1 quiet testbed.root=/dev/vda' \
        -blockdev "driver=file,node-name=rootfs-file,filename=$entry/rootfs.erofs,read-only=on" \
        -blockdev driver=raw,node-name=rootfs,file=rootfs-file,read-only=on \
        -device virtio-blk-pci,drive=rootfs,id=rootfs-disk \
        -device virtio-rng-pci \
        -serial stdio </dev/null 2>"$work/bare-qemu.log" \
        > >(perl -e '
            $| = 1; my ($t0, $line, $buf) = ($ARGV[0] / 1e6, "", "");
            use Time::HiRes qw(time);
            while (sysread(STDIN, $buf, 4096)) {
                $line .= $buf;
                while ($line =~ s/^(.*?)\r?\n//) { printf "%7.2f %s\n", time - $t0, $1; }
                if ($line =~ /login:/) { printf "%7.2f %s\n", time - $t0, $line; exit 0; }
            }' "$t0" >"$log") &
    bare_pid=$!
    # The filter exits at the prompt; QEMU goes on until killed.
    local deadline=$(($(now_us) + 900 * 1000000))
    until grep -q 'login:' "$log" 2>/dev/null; do
        if ! kill -0 "$bare_pid" 2>/dev/null; then
            say "the bare QEMU exited before the login prompt; console:"
            tail -20 "$log" >&2
            cat "$work/bare-qemu.log" >&2
            exit 1
        fi
        (($(now_us) < deadline)) || { say "no login prompt after 900s"; exit 1; }
        sleep 0.05
    done
    kill "$bare_pid"
    wait "$bare_pid" 2>/dev/null || true
    bare_pid=
    phase between
    # The filter's own stamp of the prompt, not this loop's (coarser) one.
    bare_us=$(awk 'END { printf "%.0f", $1 * 1e6 }' "$log")
}

# --- (b), (c) testbed up to all-ready ---------------------------------------
# Sets up_us; the `up` log keeps each node's "ready (Xs after QEMU started)".
# up_timed NAME PHASE ARGS...
up_timed() {
    local name=$1 what=$2 t0 t1
    shift 2
    wait_quiet "up ($name)"
    phase "$what"
    t0=$(now_us)
    if ! "$tb" up "$@" >"$work/up-$name.out" 2>"$work/up-$name.log"; then
        say "testbed up ($name) failed:"
        cat "$work/up-$name.log" >&2
        exit 1
    fi
    t1=$(now_us)
    phase between
    up_us=$((t1 - t0))
}

# The slowest node's "ready (X.Ys after its start...)" of an `up` log.
slowest_ready() {
    sed -n 's/.*ready (\([0-9.]*\)s after its start.*/\1/p' "$work/up-$1.log" | sort -n | tail -1
}

# The slowest restore ("NODE: restored from snapshot K in X.XXs") in the
# supervisor log of the composition at $1, in seconds; "n/a" if none.
slowest_restore() {
    local dir
    dir=$("$tb" status "$1" --json | sed -n 's/^ *"state_dir": "\(.*\)",$/\1/p')
    sed -n 's/.*restored from snapshot [0-9a-f]* in \([0-9.]*\)s.*/\1/p' "$dir/supervisor.log" |
        sort -n | tail -1 | grep . || echo n/a
}

# The sum of VmRSS and of Pss (KiB) of the QEMU processes of the cluster at
# $1, and their count: "RSS PSS N".
memory_of() {
    local pids rss=0 pss=0 n=0 pid
    pids=$("$tb" status "$1" --json | sed -n 's/^ *"pid": \([0-9]*\).*/\1/p')
    for pid in $pids; do
        rss=$((rss + $(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")))
        pss=$((pss + $(awk '/^Pss:/ { print $2 }' "/proc/$pid/smaps_rollup")))
        n=$((n + 1))
    done
    echo "$rss $pss $n"
}

# Round trips of a command, RUNS times after one warm-up run; sets lat_p50
# and lat_p99 (nearest rank) in milliseconds.
round_trips() {
    local name=$1 i t0 t1
    shift
    "$@" </dev/null >/dev/null 2>&1 || { say "$name failed: $*"; "$@" </dev/null; exit 1; }
    : >"$work/rtt-$name"
    for ((i = 0; i < RUNS; i++)); do
        t0=$(now_us)
        "$@" </dev/null >/dev/null 2>&1 || { say "$name failed: $*"; exit 1; }
        t1=$(now_us)
        echo $((t1 - t0)) >>"$work/rtt-$name"
    done
    read -r lat_p50 lat_p99 < <(sort -n "$work/rtt-$name" | awk '
        { v[NR] = $1 }
        END { i50 = int(NR * 0.50); if (i50 < NR * 0.50) i50++
              i99 = int(NR * 0.99); if (i99 < NR * 0.99) i99++
              printf "%.0f %.0f\n", v[i50] / 1e3, v[i99] / 1e3 }')
}

median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
spread() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { printf "%.1f-%.1f", v[1] / 1e6, v[NR] / 1e6 }'; }

# --- the snapshots, made by a first up of each (timed, not a round) ------
up_timed snap-one "making the compute role's snapshot" "$one" --scale compute=1
snap_one_us=$up_us
"$tb" down "$one" >/dev/null 2>&1
# In smoke mode the example's snapshots are made by its up "from
# snapshots" below (a 6-node up less for CI; the figure means little there).
if [[ $SMOKE = 1 ]]; then
    snap_full_text="not apart (SMOKE=1)"
else
    up_timed snap-full "making the example's snapshots" "$full" "${full_scale[@]}"
    snap_full_text="$(secs $up_us) s"
    "$tb" down "$full" >/dev/null 2>&1
fi
say "first ups (snapshots made): 1 node $(secs $snap_one_us) s, $nodes nodes $snap_full_text"

bare_all=() one_all=() one_vm_all=() warm_all=() restore_all=()
for ((round = 1; round <= BOOTS; round++)); do
    bare_boot "$round"
    bare_all+=("$bare_us")
    say "round $round/$BOOTS: bare boot $(secs "$bare_us") s"
    up_timed "one-$round" "the 1-node cold ups" "$one" --cold --scale compute=1
    one_all+=("$up_us")
    one_vm_all+=("$(slowest_ready "one-$round")")
    say "round $round/$BOOTS: up --cold (1 node) $(secs "$up_us") s"
    "$tb" down "$one" >/dev/null 2>&1
    up_timed "warm-$round" "the 1-node ups from the snapshot" "$one" --scale compute=1
    warm_all+=("$up_us")
    restore_all+=("$(slowest_restore "$one")")
    say "round $round/$BOOTS: up from the snapshot (1 node) $(secs "$up_us") s"
    "$tb" down "$one" >/dev/null 2>&1
done
bare_us=$(median "${bare_all[@]}")
one_us=$(median "${one_all[@]}")
one_vm=$(median "${one_vm_all[@]}")
warm_us=$(median "${warm_all[@]}")
restore_s=$(median "${restore_all[@]}")

if [[ $SMOKE = 1 ]]; then
    full_us=
else
    up_timed full "the ${nodes}-node cold up" "$full" --cold "${full_scale[@]}"
    full_us=$up_us
    full_vm=$(slowest_ready full)
    say "up --cold ($nodes nodes): $(secs $full_us) s"
    "$tb" down "$full" >/dev/null 2>&1
fi
up_timed full-warm "the ${nodes}-node up from snapshots" "$full" "${full_scale[@]}"
full_warm_us=$up_us
say "up from snapshots ($nodes nodes): $(secs $full_warm_us) s"

# --- host RSS per idle node -------------------------------------------------
say "idling ${IDLE}s ..."
phase "the idle RSS and the round trips"
sleep "$IDLE"
pids=$("$tb" status "$full" --json | sed -n 's/^ *"pid": \([0-9]*\).*/\1/p')
read -r _ pss_kib _ < <(memory_of "$full")
rss_kib=0 anon_kib=0 thp_kib=0 npids=0
for pid in $pids; do
    rss_kib=$((rss_kib + $(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")))
    anon_kib=$((anon_kib + $(awk '/^RssAnon:/ { print $2 }' "/proc/$pid/status")))
    # QEMU asks for transparent huge pages for guest RAM and, under TCG,
    # for its translation buffer (see bench/README.md).
    thp_kib=$((thp_kib + $(awk '/^AnonHugePages:/ { print $2 }' "/proc/$pid/smaps_rollup")))
    npids=$((npids + 1))
done
((npids == nodes)) || notes+=("status named $npids QEMU pids for $nodes nodes")
per_node_mib() { awk -v k="$1" -v n="$npids" 'BEGIN { printf "%.0f", k / n / 1024 }'; }
rss_node_mib=$(per_node_mib $rss_kib)
pss_node_mib=$(per_node_mib $pss_kib)
anon_node_mib=$(per_node_mib $anon_kib)
thp_node_mib=$(per_node_mib $thp_kib)

# --- exec vs ssh round trips ------------------------------------------------
"$tb" ssh-config "$full" >"$work/ssh.cfg"
say "round trips to $NODE ($RUNS each) ..."
round_trips exec "$tb" exec -f "$full" "$NODE" -- true
exec_p50=$lat_p50 exec_p99=$lat_p99
round_trips tbssh "$tb" ssh -f "$full" "$NODE" -- true
tbssh_p50=$lat_p50 tbssh_p99=$lat_p99
round_trips ssh ssh -F "$work/ssh.cfg" "$NODE" true
ssh_p50=$lat_p50 ssh_p99=$lat_p99

# Where a node's boot went (under the full cluster's contention).
analyze=$("$tb" exec -f "$full" "$NODE" -- systemd-analyze 2>&1 | head -1 | sed "s/ *$//" || true)

# --- the whole cluster saved and restored (docs/snapshots.md) ------------
phase "the cluster snapshot"
t0=$(now_us)
"$tb" snapshot save -f "$full" bench >"$work/save.out" 2>"$work/save.log" ||
    { say "snapshot save failed:"; cat "$work/save.log" >&2; exit 1; }
save_us=$(($(now_us) - t0))
save_mib=$(sed -n 's/.* \([0-9]*\) MiB;.*/\1/p' "$work/save.out")
# Something to undo: a node crashed.
"$tb" power crash -f "$full" "$NODE" >/dev/null 2>&1
t0=$(now_us)
"$tb" snapshot restore -f "$full" bench >"$work/restore.out" 2>"$work/restore.log" ||
    { say "snapshot restore failed:"; cat "$work/restore.log" >&2; exit 1; }
restore_all_us=$(($(now_us) - t0))
"$tb" exec -f "$full" "$NODE" -- true >/dev/null ||
    { say "$NODE does not answer after the restore"; exit 1; }
"$tb" snapshot rm -f "$full" bench >/dev/null 2>&1
phase between

t0=$(now_us)
"$tb" down "$full" >/dev/null 2>&1
down_us=$(($(now_us) - t0))

# --- MANY nodes of one role from its snapshot -----------------------------
many_line="$MANY nodes from one snapshot: skipped (MANY=0)"
if ((MANY > 0)); then
    up_timed many "$MANY nodes from the snapshot" "$one" --scale compute="$MANY"
    sleep "$IDLE"
    read -r m_rss m_pss m_n < <(memory_of "$one")
    many_line="$m_n nodes from one snapshot: up in $(secs $up_us) s; per idle node RSS $(awk -v k="$m_rss" -v n="$m_n" 'BEGIN { printf "%.0f", k / n / 1024 }') MiB, PSS $(awk -v k="$m_pss" -v n="$m_n" 'BEGIN { printf "%.0f", k / n / 1024 }') MiB (target <= 120 MiB PSS)"
    "$tb" down "$one" >/dev/null 2>&1
fi
phase done
kill "$sampler_pid" 2>/dev/null || true
sampler_pid=
while IFS='|' read -r p pids; do
    notes+=("other VMs ran during $p: qemu-system pid(s) $pids")
done < <(awk -F'|' '$1 != "between" && $1 != "setup" && $1 != "done" && !seen[$0]++ {
             l[$1] = l[$1] (l[$1] == "" ? "" : " ") $2 } END { for (p in l) print p "|" l[p] }' "$work/foreign")

# --- report ----------------------------------------------------------------
# Each round's up against the bare boot just before it: neighbours in time
# share whatever the host was doing then.
round_ratios() {
    local i out=()
    for ((i = 0; i < BOOTS; i++)); do out+=("$(ratio "${one_all[i]}" "${bare_all[i]}")"); done
    echo "${out[*]}"
}
waves=$(((nodes + cores - 1) / cores))
if [[ -n $full_us ]]; then
    full_lines="up --cold, $nodes nodes ready: $(secs $full_us) s   (slowest node ready ${full_vm} s after its start)
  $nodes nodes cold / (ceil($nodes/$cores) x bare): $(ratio $full_us $((waves * bare_us)))x (target <= 1.25x; ceil($nodes/$cores) = $waves)
  $nodes nodes from snapshots / cold: $(ratio $full_warm_us $full_us)x"
else
    full_lines="up --cold, $nodes nodes: skipped (SMOKE=1)"
fi
cat <<EOF
host:                 $cores cores, $accel_name; guests ${mem} MiB, $cpus vCPU
bare boot to login:   $(secs $bare_us) s   (median of $BOOTS: $(spread "${bare_all[@]}") s; one QEMU, compute image, no NICs)
up --cold, 1 node ready: $(secs $one_us) s   (median of $BOOTS: $(spread "${one_all[@]}") s; node ready ${one_vm} s after its start)
  1 node cold / bare: $(ratio $one_us $bare_us)x (target <= 1.25x; per round: $(round_ratios))
up from the snapshot, 1 node ready: $(secs $warm_us) s   (median of $BOOTS: $(spread "${warm_all[@]}") s; the restore itself ${restore_s} s, target <= 0.5 s)
  1 node from the snapshot / cold: $(ratio $warm_us $one_us)x (target <= 0.2x)
$full_lines
up from snapshots, $nodes nodes ready: $(secs $full_warm_us) s (target <= 40 s)
snapshot save of the running $nodes nodes: $(secs $save_us) s ($save_mib MiB); restore after a crash: $(secs $restore_all_us) s (target <= 15 s)${full_us:+; restore / cold up: $(ratio $restore_all_us $full_us)x}
first ups, snapshots made: 1 node $(secs $snap_one_us) s, $nodes nodes $snap_full_text
host memory per idle node ($nodes from snapshots, after ${IDLE} s idle): RSS $rss_node_mib MiB, PSS $pss_node_mib MiB (target <= 120 MiB PSS for ${mem} MiB guests)
  of which anonymous: $anon_node_mib MiB, in transparent huge pages: $thp_node_mib MiB
$many_line
round trip to $NODE, $RUNS runs each (p50 / p99):
  testbed exec -- true:     $exec_p50 / $exec_p99 ms
  testbed ssh -- true:      $tbssh_p50 / $tbssh_p99 ms
  ssh -F ssh-config true:   $ssh_p50 / $ssh_p99 ms
  testbed ssh / exec (p50): $(ratio $tbssh_p50 $exec_p50)x (target >= 5x)
  ssh / exec (p50):         $(ratio $ssh_p50 $exec_p50)x (target >= 5x)
$NODE's systemd-analyze: ${analyze:-n/a}
down ($nodes nodes):        $(secs $down_us) s
EOF
echo "load average (1 min) before each boot: ${loads[*]}"
for n in "${notes[@]}"; do echo "note: $n"; done
