#!/usr/bin/env bash
# Makes the unprivileged users the test suite runs testbed as (the rootless
# tests, crates/testbed/tests/rootless.rs; docs/rootless.md). scripts/test.sh
# calls it; safe to run again. As root only: it adds users.
#
# - testbed-user, testbed-user2 and testbed-podman: no password (they cannot log in), no
#   sudo, a home of their own, a block of 65536 subordinate user and group
#   ids each (what rootless image builds map root to), and the `kvm` group
#   where the host has one (what a user needs for KVM; the tests work on
#   TCG where KVM does not).
# - testbed-virt and testbed-novirt: no password, no sudo; the first in
#   the group `testbed-libvirt`, whose members polkit lets manage
#   qemu:///system (scripts/test.sh: setup-libvirt.sh --polkit-group).
# - testbed-docker: no password, no sudo, a member of the `docker` group
#   (made by Debian's docker.io, scripts/setup-docker.sh): the docker
#   tests run testbed as that user too (crates/testbed/tests/docker.rs).
#
# On your own machine, give your own user what these get:
#   sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 "$USER"
#   sudo usermod -aG kvm "$USER"      # where /dev/kvm exists
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "setup-users: only root can add the test users; the rootless tests need them" >&2
    exit 1
fi

# NAME exists (no password: it cannot log in; a home; a group of its own).
ensure_user() {
    if ! id "$1" >/dev/null 2>&1; then
        # useradd gives a new user a free block of subordinate ids
        # (SUB_UID_MIN.. in /etc/login.defs) when /etc/subuid is managed.
        useradd --create-home --shell /bin/bash --user-group "$1"
        echo "setup-users: added $1" >&2
    fi
}

# USER is a member of GROUP.
ensure_member() {
    if ! id -nG "$1" | tr ' ' '\n' | grep -qx "$2"; then
        usermod -aG "$2" "$1"
    fi
}

for user in testbed-user testbed-user2 testbed-podman; do
    ensure_user "$user"
    # A block nobody has: after the highest block in either file.
    top=$(cat /etc/subuid /etc/subgid 2>/dev/null | awk -F: '{ e = $2 + $3; if (e > m) m = e } END { print (m > 100000 ? m : 100000) }')
    if ! grep -q "^$user:" /etc/subuid 2>/dev/null; then
        usermod --add-subuids "$top-$((top + 65535))" "$user"
        echo "setup-users: gave $user subordinate user ids $top-$((top + 65535))" >&2
    fi
    if ! grep -q "^$user:" /etc/subgid 2>/dev/null; then
        usermod --add-subgids "$top-$((top + 65535))" "$user"
        echo "setup-users: gave $user subordinate group ids $top-$((top + 65535))" >&2
    fi
done

# testbed-podman runs rootless podman (crates/testbed/tests/containers.rs)
# in what a login session on a systemd host gives: its runtime folder
# /run/user/UID, and a cgroup delegated to it (`Delegate=yes`). On a
# cgroup v1 host that is a folder of the name=systemd hierarchy it owns,
# which the test's commands enter first (systemd in its containers makes
# its cgroups there). And /dev/net/tun with the mode the kernel and udev
# give it, 0666 (slirp4netns opens it for rootless networks).
podman_uid=$(id -u testbed-podman)
install -d -m 0700 -o testbed-podman -g testbed-podman "/run/user/$podman_uid"
"$(dirname "${BASH_SOURCE[0]}")/mount-systemd-cgroup.sh"
if [[ $(stat -f -c %T /sys/fs/cgroup) != cgroup2fs ]]; then
    mkdir -p /sys/fs/cgroup/systemd/testbed-podman
    chown -R testbed-podman:testbed-podman /sys/fs/cgroup/systemd/testbed-podman
fi
if [[ -c /dev/net/tun && $(stat -c %a /dev/net/tun) != 666 ]]; then
    chmod 0666 /dev/net/tun
fi

# The libvirt tests' users (crates/testbed/tests/libvirt_users.rs):
# testbed-virt is in testbed-libvirt, the group scripts/test.sh gives
# qemu:///system through polkit (setup-libvirt.sh --polkit-group);
# testbed-novirt is not, and must be refused. testbed-podman is in it
# too: its doctor shows every backend a user without root can have usable
# at once (docker's group aside, which is root's).
groupadd -f testbed-libvirt
ensure_user testbed-virt
ensure_user testbed-novirt
ensure_member testbed-virt testbed-libvirt
ensure_member testbed-podman testbed-libvirt

users=(testbed-user testbed-user2 testbed-podman testbed-virt testbed-novirt)
if getent group docker >/dev/null; then
    ensure_user testbed-docker
    ensure_member testbed-docker docker
    users+=(testbed-docker)
fi

for user in "${users[@]}"; do
    # What a user needs for KVM (the tests work on TCG where KVM does not).
    if getent group kvm >/dev/null && [[ $user != testbed-docker ]]; then
        ensure_member "$user" kvm
    fi
    # The tests check that these users are not root in any way.
    for group in sudo wheel root; do
        if id -nG "$user" | tr ' ' '\n' | grep -qx "$group"; then
            echo "setup-users: $user is in the group $group; the tests as users need users without privileges" >&2
            exit 1
        fi
    done
done
