#!/usr/bin/env bash
# Makes podman run testbed's containers on this host (scripts/setup-host.sh
# calls it; safe to run again). What it configures, only when the host needs
# it, in a drop-in of its own (never the administrator's containers.conf):
#
# - default_ulimits = []: podman gives rootful containers nofile=1048576,
#   which a host whose hard limit is lower refuses ("error setting rlimits
#   ... operation not permitted"); an empty list keeps the caller's limits.
# - runtime = "runc": crun cannot create containers on a host whose cgroups
#   are not the unified (v2) hierarchy; runc can.
#
# As root the drop-in goes to /etc/containers/containers.conf.d/, otherwise
# to ~/.config/containers/containers.conf.d/ (rootless podman).
set -euo pipefail

if ! command -v podman >/dev/null 2>&1; then
    echo "setup-podman: podman is not installed (scripts/setup-host.sh installs it)" >&2
    exit 1
fi

settings=()
hard=$(ulimit -Hn)
if [[ $hard != unlimited ]] && ((hard < 1048576)); then
    settings+=("[containers]" "# the hard open-files limit here is $hard, below podman's default of 1048576" "default_ulimits = []")
fi
if [[ $(stat -fc %T /sys/fs/cgroup) != cgroup2fs ]] && command -v runc >/dev/null 2>&1; then
    settings+=("[engine]" "# cgroups here are not the unified v2 hierarchy, which crun needs" 'runtime = "runc"')
fi

# Every container's systemd takes inotify instances, counted per user on
# the host: the kernel's default of 128 runs out at a few dozen nodes
# ("Failed to create inotify object: Too many open files").
want_instances=8192
have_instances=$(cat /proc/sys/fs/inotify/max_user_instances)
if ((have_instances < want_instances)); then
    if [[ $(id -u) -eq 0 ]]; then
        sysctl -q -w fs.inotify.max_user_instances=$want_instances
        if [[ -d /etc/sysctl.d ]]; then
            echo "fs.inotify.max_user_instances = $want_instances" > /etc/sysctl.d/50-testbed.conf
        fi
        echo "setup-podman: raised fs.inotify.max_user_instances from $have_instances to $want_instances" >&2
    else
        echo "setup-podman: fs.inotify.max_user_instances is $have_instances; dozens of container nodes need more:" >&2
        echo "  sudo sysctl -w fs.inotify.max_user_instances=$want_instances" >&2
    fi
fi

if [[ $(id -u) -eq 0 ]]; then
    dir=/etc/containers/containers.conf.d
else
    dir=${XDG_CONFIG_HOME:-$HOME/.config}/containers/containers.conf.d
fi
file=$dir/50-testbed.conf
if ((${#settings[@]})); then
    wanted=$(printf '# Written by testbed'"'"'s scripts/setup-podman.sh for this host.\n'; printf '%s\n' "${settings[@]}")
    if [[ ! -f $file ]] || [[ $(cat "$file") != "$wanted" ]]; then
        mkdir -p "$dir"
        printf '%s\n' "$wanted" > "$file.tmp"
        mv "$file.tmp" "$file"
        echo "setup-podman: wrote $file" >&2
    fi
elif [[ -f $file ]]; then
    rm -f "$file"
fi

if ! out=$(podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.NetworkBackend}}' 2>&1); then
    echo "setup-podman: podman does not answer: $out" >&2
    exit 1
fi
