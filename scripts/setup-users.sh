#!/usr/bin/env bash
# Makes the unprivileged users the test suite runs testbed as (the rootless
# tests, crates/testbed/tests/rootless.rs; docs/rootless.md). scripts/test.sh
# calls it; safe to run again. As root only: it adds users.
#
# - testbed-user and testbed-user2: no password (they cannot log in), no
#   sudo, a home of their own, a block of 65536 subordinate user and group
#   ids each (what rootless image builds map root to), and the `kvm` group
#   where the host has one (what a user needs for KVM; the tests work on
#   TCG where KVM does not).
#
# On your own machine, give your own user what these get:
#   sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 "$USER"
#   sudo usermod -aG kvm "$USER"      # where /dev/kvm exists
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "setup-users: only root can add the test users; the rootless tests need them" >&2
    exit 1
fi

for user in testbed-user testbed-user2; do
    if ! id "$user" >/dev/null 2>&1; then
        # useradd gives a new user a free block of subordinate ids
        # (SUB_UID_MIN.. in /etc/login.defs) when /etc/subuid is managed.
        useradd --create-home --shell /bin/bash --user-group "$user"
        echo "setup-users: added $user" >&2
    fi
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
    if getent group kvm >/dev/null && ! id -nG "$user" | tr ' ' '\n' | grep -qx kvm; then
        usermod -aG kvm "$user"
    fi
    # The tests check that these users are not root in any way.
    for group in sudo wheel root; do
        if id -nG "$user" | tr ' ' '\n' | grep -qx "$group"; then
            echo "setup-users: $user is in the group $group; the rootless tests need users without privileges" >&2
            exit 1
        fi
    done
done
