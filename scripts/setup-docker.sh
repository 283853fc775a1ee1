#!/usr/bin/env bash
# The docker backend's engine (`--backend docker`, docs/containers.md):
# Debian's docker.io, its daemon running, and what systemd in a docker
# container needs on this host. scripts/test.sh calls it (CI runs the
# container tests on docker too); safe to run again. As root only: it
# installs a package, mounts a cgroup hierarchy and starts a daemon.
#
# - installs docker.io (dockerd, containerd, runc, and Debian's docker
#   client, /usr/bin/docker) when missing;
# - on a host with cgroup v1, mounts the `name=systemd` hierarchy at
#   /sys/fs/cgroup/systemd if nothing has (a host that runs systemd has it;
#   docker binds it into each node, where systemd makes its cgroups);
# - starts the daemon when none answers: `systemctl start docker` where
#   systemd runs, otherwise `dockerd --iptables=false` in the background
#   (its log in /var/log/testbed-dockerd.log), and waits until it answers;
#   warns where docker's iptables rules cut other engines' bridges.
#
# Users in the `docker` group may then use --backend docker (that group is
# root in all but name: docs/rootless.md).
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "setup-docker: only root can install and start docker; as root run: $0" >&2
    exit 1
fi

if ! dpkg-query -W -f='${Status}' docker.io 2>/dev/null | grep -q 'install ok installed'; then
    echo "setup-docker: installing docker.io" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi

# Debian's client, whatever else is first on PATH.
docker=/usr/bin/docker

"$(dirname "${BASH_SOURCE[0]}")/mount-systemd-cgroup.sh"
if [[ $(stat -f -c %T /sys/fs/cgroup) == cgroup2fs ]]; then
    echo "setup-docker: this host has cgroup v2, where docker cannot give systemd in a container a cgroup it may write without --privileged (docs/containers.md): --backend docker will refuse; use --backend podman" >&2
fi

if ! "$docker" version >/dev/null 2>&1; then
    if [[ -d /run/systemd/system ]]; then
        systemctl start docker
    else
        # Without its iptables rules: they set the FORWARD policy to DROP
        # and make bridged traffic pass through it (br_netfilter), which
        # cuts podman's and libvirt's bridges on the same host. testbed's
        # docker networks are internal, and each node's own rules keep
        # it from the host's side (docs/containers.md).
        echo "setup-docker: starting dockerd --iptables=false (log: /var/log/testbed-dockerd.log)" >&2
        setsid dockerd --iptables=false >>/var/log/testbed-dockerd.log 2>&1 < /dev/null &
    fi
    for _ in $(seq 60); do
        "$docker" version >/dev/null 2>&1 && break
        sleep 1
    done
    if ! "$docker" version >/dev/null 2>&1; then
        echo "setup-docker: the docker daemon did not answer within 60 s; its log:" >&2
        tail -20 /var/log/testbed-dockerd.log >&2 || true
        exit 1
    fi
fi
if [[ $(iptables -S FORWARD 2>/dev/null | head -n1) == "-P FORWARD DROP" ]] &&
    [[ $(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null) == 1 ]]; then
    echo "setup-docker: warning: the FORWARD policy is DROP and bridged traffic passes iptables (docker's rules do this): containers of podman on one bridge cannot reach each other; start dockerd with --iptables=false (\"iptables\": false in /etc/docker/daemon.json), then \`iptables -P FORWARD ACCEPT\`" >&2
fi
echo "setup-docker: docker $("$docker" version --format '{{.Server.Version}}') answers" >&2
