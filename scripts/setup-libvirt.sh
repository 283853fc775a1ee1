#!/usr/bin/env bash
# Makes libvirt's qemu:///system usable on this host, for testbed's libvirt
# backend and its tests. Run as root; idempotent, so it is safe before every
# test run (scripts/test.sh calls it).
#
# With systemd as PID 1 it only starts the units. Without systemd (containers,
# CI runners) nothing is socket-activated and the Debian packages' runtime
# directories are not created at boot, so it creates them and starts
# virtlogd and libvirtd as daemons itself. Either way it waits until
# qemu:///system answers.
#
#   scripts/setup-libvirt.sh                       start libvirt
#   scripts/setup-libvirt.sh --polkit-group GROUP  also let GROUP manage
#                                                  qemu:///system without root
#                                                  (docs/libvirt.md)
set -euo pipefail

polkit_group=""
while [ $# -gt 0 ]; do
    case "$1" in
        --polkit-group)
            polkit_group="${2:?--polkit-group needs a group name}"
            shift 2
            ;;
        -h | --help)
            sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "setup-libvirt.sh: unknown argument $1" >&2
            exit 2
            ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-libvirt.sh: run as root (it starts the system libvirt daemon)" >&2
    exit 1
fi

for tool in libvirtd virtlogd virsh; do
    if ! command -v "$tool" >/dev/null; then
        echo "setup-libvirt.sh: $tool is missing; install libvirt-daemon-system and libvirt-clients (scripts/host-packages.txt)" >&2
        exit 1
    fi
done

# The polkit rule: members of GROUP may manage qemu:///system (the same rule
# Debian ships for the libvirt group, for any group). Written only when
# asked; polkit reads rules.d at once, no restart needed.
if [ -n "$polkit_group" ]; then
    if ! getent group "$polkit_group" >/dev/null; then
        echo "setup-libvirt.sh: no group $polkit_group (create it with groupadd)" >&2
        exit 1
    fi
    mkdir -p /etc/polkit-1/rules.d
    rule=/etc/polkit-1/rules.d/60-testbed-libvirt.rules
    cat >"$rule.tmp" <<EOF
// Written by testbed's scripts/setup-libvirt.sh: members of the group
// "$polkit_group" may manage the system libvirt daemon (qemu:///system).
polkit.addRule(function(action, subject) {
    if (action.id == "org.libvirt.unix.manage" &&
        subject.isInGroup("$polkit_group")) {
        return polkit.Result.YES;
    }
});
EOF
    mv "$rule.tmp" "$rule"
    # polkit answers libvirtd over the system D-Bus. Without systemd
    # (containers, CI runners) neither runs: start both, before libvirtd.
    if [ "$(cat /proc/1/comm 2>/dev/null)" != systemd ]; then
        if ! command -v dbus-daemon >/dev/null || [ ! -x /usr/lib/polkit-1/polkitd ]; then
            echo "setup-libvirt.sh: --polkit-group needs dbus and polkitd (scripts/host-packages.txt)" >&2
            exit 1
        fi
        if [ ! -S /run/dbus/system_bus_socket ] || ! pgrep -x dbus-daemon >/dev/null; then
            mkdir -p /run/dbus
            rm -f /run/dbus/pid
            dbus-daemon --system --fork
            bus_started=1
        fi
        if ! pgrep -x polkitd >/dev/null; then
            setsid /usr/lib/polkit-1/polkitd --no-debug >>/var/log/testbed-polkitd.log 2>&1 </dev/null &
            for _ in $(seq 1 50); do
                pgrep -x polkitd >/dev/null && break
                sleep 0.1
            done
        fi
    fi
fi

# A libvirtd started before the system bus (an earlier run of this script
# without --polkit-group) keeps failing every polkit check ("Unable to get
# system bus connection"): stop it, so it starts again below, on the bus.
if [ -n "${bus_started:-}" ] && pkill -x libvirtd; then
    for _ in $(seq 1 100); do
        pgrep -x libvirtd >/dev/null || break
        sleep 0.1
    done
    rm -f /var/run/libvirtd.pid
fi

if [ "$(cat /proc/1/comm 2>/dev/null)" != systemd ] && [ -n "$(pgrep -x virtlogd)" ] &&
    [ "$(stat -c %G /dev/kvm 2>/dev/null || echo kvm)" = kvm ] &&
    virsh -c qemu:///system list --name >/dev/null 2>&1; then
    # Already up, however it was started (a daemon started by hand keeps
    # no pid file where this script looks, and a second one would fail).
    exit 0
fi

if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
    systemctl start virtlogd.socket libvirtd.socket 2>/dev/null || true
    systemctl start virtlogd libvirtd
else
    mkdir -p /var/log/libvirt/qemu /var/run/libvirt /var/lib/libvirt/images \
        /var/lib/libvirt/qemu /var/cache/libvirt/qemu
    # Without udev nothing applies the kvm group to /dev/kvm (udev's rule:
    # GROUP="kvm", MODE="0660"). Left root-only, libvirt's QEMU capability
    # probe (which opens it as root) finds KVM while its later check for
    # the QEMU user does not, so libvirt judges its cache outdated and
    # re-probes QEMU at every domain start: ~90 s per start here instead
    # of 0.5 s. Whether KVM really works is testbed's own decision
    # (accel::detect), not this permission.
    if [ -c /dev/kvm ] && getent group kvm >/dev/null && [ -z "$(pgrep -x systemd-udevd)" ]; then
        chgrp kvm /dev/kvm
        chmod 0660 /dev/kvm
    fi
    # QEMU runs as libvirt-qemu (the package's postinst creates it); where
    # that user is missing, run QEMU as root instead of failing every start.
    if ! id libvirt-qemu >/dev/null 2>&1; then
        conf=/etc/libvirt/qemu.conf
        if ! grep -q '^user = "root"' "$conf"; then
            printf '\n# testbed (scripts/setup-libvirt.sh): no libvirt-qemu user here\nuser = "root"\ngroup = "root"\n' >>"$conf"
        fi
    fi
    # A daemon is running if its pid file names a live process of that name.
    running() {
        local pidfile="/var/run/$1.pid" pid
        [ -s "$pidfile" ] || return 1
        pid=$(cat "$pidfile")
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
    }
    if ! running virtlogd; then
        virtlogd --daemon
    fi
    if ! running libvirtd; then
        # Without systemd nothing collects a daemon's stderr; keep its
        # warnings and errors in a file.
        LIBVIRT_LOG_OUTPUTS="3:file:/var/log/libvirt/libvirtd.log" libvirtd --daemon
    fi
fi

for _ in $(seq 1 300); do
    if virsh -c qemu:///system list --name >/dev/null 2>&1; then
        exit 0
    fi
    sleep 0.1
done
echo "setup-libvirt.sh: qemu:///system did not answer within 30 s; see /var/log/libvirt/libvirtd.log" >&2
virsh -c qemu:///system list --name >&2 || true
exit 1
