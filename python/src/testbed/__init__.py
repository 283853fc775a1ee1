"""Drive testbed clusters from Python.

A client of the cluster supervisor's JSON API (a unix socket in the
cluster's state directory), with the NixOS test driver's node methods, fault
injection as context managers, and the ``testbed`` command line used only to
bring clusters up and down and to build images::

    from testbed import Cluster

    with Cluster.up("examples/etcd") as cluster:
        for m in cluster.role("etcd"):
            m.wait_for_unit("etcd")
        with cluster.partition(["etcd1"], ["etcd2", "etcd3"]):
            cluster["etcd1"].fail("etcdctl --command-timeout=15s put k v")

Also in this package: a pytest plugin (:mod:`testbed.pytest_plugin`, the
``testbed_cluster`` fixture) and a testinfra backend
(:mod:`testbed.testinfra`, hosts ``testbed://NODE``). See docs/python.md.
"""

from .api import (
    ApiClient,
    ClusterStatus,
    ExitStatus,
    FaultEvent,
    LinkRule,
    NodeStatus,
    SnapshotInfo,
)
from .artifacts import Artifacts
from .cluster import Cluster, CommandResult, Link, Node, Partition, Undo, UnknownNode
from .errors import (
    CliError,
    CommandError,
    CommandFailed,
    ConfigError,
    NodeNotReady,
    NotRunning,
    ProtocolError,
    SupervisorError,
    SupervisorTimeout,
    TestbedError,
    UnsafeStateDir,
    Unsupported,
    WaitFailed,
    WaitTimeout,
)
from .state import StateDir, cluster_key
from .timeouts import Timeouts, timeout_factor

#: The package's version: the Rust workspace's (Cargo.toml), checked by
#: tests/test_version.py.
__version__ = "0.1.0"

__all__ = [
    "ApiClient",
    "Artifacts",
    "CliError",
    "Cluster",
    "ClusterStatus",
    "CommandError",
    "CommandFailed",
    "CommandResult",
    "ConfigError",
    "ExitStatus",
    "FaultEvent",
    "Link",
    "LinkRule",
    "Node",
    "NodeNotReady",
    "NodeStatus",
    "NotRunning",
    "UnsafeStateDir",
    "Partition",
    "ProtocolError",
    "SnapshotInfo",
    "StateDir",
    "SupervisorError",
    "SupervisorTimeout",
    "TestbedError",
    "Timeouts",
    "Undo",
    "UnknownNode",
    "Unsupported",
    "WaitFailed",
    "WaitTimeout",
    "__version__",
    "cluster_key",
    "timeout_factor",
]

import logging as _logging

# A library logs and lets the application decide where it goes.
_logging.getLogger("testbed").addHandler(_logging.NullHandler())
