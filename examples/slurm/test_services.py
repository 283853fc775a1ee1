"""A testinfra check of the Slurm example's nodes: each role's services run,
every node has the cluster's munge key, slurm.conf is rendered from the
topology, and the daemons listen. Plain pytest-testinfra (``host.service``,
``host.file``, ``host.socket``) on testbed nodes (``testbed://NODE``,
docs/python.md), run against a cluster that is up already:

    testbed up examples/slurm --scale compute=1
    pytest examples/slurm/test_services.py --testbed-composition=examples/slurm
    testbed down examples/slurm

By default every node of the cluster is checked (``testbed://*``, read from
the running cluster when pytest collects the tests);
``--hosts=testbed://ctl,testbed://compute1`` picks nodes.
"""

testinfra_hosts = ["testbed://*"]

#: The services each role's activation starts (testbed.toml).
SERVICES = {
    "ctl": ["munge", "slurmctld", "home.automount"],
    "nfs": ["srv-home.mount", "nfs-server"],
    "compute": ["munge", "dbus", "slurmd", "home.automount"],
}

#: Units that run on VMs only: containers share the host's kernel, which may
#: have no NFS, so testbed.toml skips them there (ConditionVirtualization).
VM_ONLY = {"home.automount", "srv-home.mount", "nfs-server"}

#: The TCP port each role's daemon listens on.
PORTS = {"ctl": 6817, "compute": 6818, "nfs": 2049}


def on_vms(host):
    return host.backend.cluster.backend in ("qemu", "libvirt")


def test_the_roles_services_run(host):
    role = host.backend.role
    expected = [u for u in SERVICES[role] if on_vms(host) or u not in VM_ONLY]
    not_running = [u for u in expected if not host.service(u).is_running]
    assert not_running == [], "not running on {} ({}): {}".format(host.backend.get_hostname(), role, not_running)


def test_every_node_has_the_clusters_munge_key(host):
    key = host.file("/etc/munge/munge.key")
    assert key.is_file
    assert (key.user, key.group, key.mode, key.size) == ("munge", "munge", 0o400, 1024)


def test_slurm_conf_names_the_controller_and_every_compute_node(host):
    conf = host.file("/etc/slurm/slurm.conf")
    if host.backend.role == "nfs":
        # The file server is no Slurm node.
        assert not conf.exists
        return
    text = conf.content_string
    assert "SlurmctldHost=ctl(" in text
    computes = [n.name for n in host.backend.cluster.role("compute")]
    for name in computes:
        assert "NodeName={} ".format(name) in text
    assert "PartitionName=main Nodes={} ".format(",".join(computes)) in text


def test_the_daemons_listen(host):
    role = host.backend.role
    port = PORTS[role]
    if role == "nfs" and not on_vms(host):
        assert not host.service("nfs-server").is_running
        return
    # Active is not yet listening for every daemon: wait (through testbed's
    # agent) until the port takes connections, then ask the node's sockets.
    host.backend.node.wait_for_open_port(port, 60)
    assert host.socket("tcp://0.0.0.0:{}".format(port)).is_listening or host.socket(
        "tcp://:::{}".format(port)
    ).is_listening
