#!/usr/bin/env bash
# On a host with cgroup v1, mounts the `name=systemd` cgroup hierarchy at
# /sys/fs/cgroup/systemd if nothing has (a host that runs systemd has it).
# systemd in a container makes its cgroups there: docker binds it into
# each node, and a rootless podman user's cgroup in it must be its own
# (docs/containers.md, docs/rootless.md). Does nothing on cgroup v2 and
# where it is mounted. As root; scripts/setup-docker.sh and
# scripts/setup-users.sh call it.
set -euo pipefail

if [[ $(stat -f -c %T /sys/fs/cgroup) == cgroup2fs ]]; then
    exit 0
fi
if ! grep -qE '^[^ ]+ [^ ]+ [^ ]+ [^ ]+ /sys/fs/cgroup/systemd .* - cgroup [^ ]+ [^ ]*name=systemd' /proc/self/mountinfo; then
    mkdir -p /sys/fs/cgroup/systemd
    mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
    echo "mount-systemd-cgroup: mounted the name=systemd cgroup hierarchy at /sys/fs/cgroup/systemd" >&2
fi
