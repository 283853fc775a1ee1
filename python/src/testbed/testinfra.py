"""A testinfra backend for testbed nodes: hosts ``testbed://NODE``.

Existing pytest-testinfra suites (``host.service("slurmd").is_running``,
``host.file(...)``, ``host.socket(...)``) run against the nodes of a running
cluster unchanged: every command goes through the supervisor's API and the
node's agent (not SSH, not the cluster network)::

    pytest --hosts=testbed://ctl,testbed://compute1 --testbed-composition examples/slurm
    testinfra.get_host("testbed://ctl?composition=examples/slurm")

The composition is, in this order: ``?composition=PATH`` in the host
spec (or ``composition=`` given to ``get_host``), the pytest option
``--testbed-composition`` (or the ini option ``testbed_composition``),
``$TESTBED_COMPOSITION``, else the current folder. A host name with shell
wildcards (``testbed://compute*``, ``testbed://*``) stands for every node
whose name matches: those are read from the running cluster when the hosts
are listed (pytest's collection), so it must be up by then.

Registration: testinfra 7 (Debian 12's python3-testinfra) finds backends in
a fixed table, ``testinfra.backend.BACKENDS``, and its host-spec parser keeps
only the query keys it knows. :func:`register` adds ``testbed`` to that table
and wraps the parser so that ``composition`` reaches the backend too. The
pytest plugin calls it when it is loaded (pytest loads it through its
``pytest11`` entry point), so ``pytest --hosts=testbed://...`` just works;
outside pytest, ``import testbed.testinfra`` registers the backend.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import testinfra.backend
from testinfra.backend import base

from .cluster import Cluster, Node
from .errors import ConfigError
from .state import absolute, resolve_composition
from .units import seconds

#: The variable that names the composition when nothing else does.
COMPOSITION_ENV = "TESTBED_COMPOSITION"

_default_composition: Optional[str] = None
_clusters: Dict[Tuple[str, str], Cluster] = {}


def set_default_composition(path: Optional[str]) -> None:
    """The composition of hosts that name none (the pytest plugin sets it
    from ``--testbed-composition`` / ``testbed_composition``)."""
    global _default_composition
    _default_composition = path


def composition_for(explicit: Optional[str] = None) -> Path:
    """The composition file a host refers to (see the module's doc)."""
    chosen = (
        explicit
        or _default_composition
        or os.environ.get(COMPOSITION_ENV)
        or None
    )
    file = resolve_composition(os.path.expanduser(chosen) if chosen else None)
    return Path(absolute(file))


def cluster_for(composition: Optional[str] = None) -> Cluster:
    """The running cluster of ``composition``, attached once per process
    and state folder and shared by every host of it."""
    file = composition_for(composition)
    key = (str(file), os.environ.get("TESTBED_STATE_DIR", ""))
    cluster = _clusters.get(key)
    if cluster is None:
        cluster = Cluster.attach(file)
        _clusters[key] = cluster
    return cluster


def forget_clusters() -> None:
    """Drops the clusters attached so far (they may have been taken down)."""
    _clusters.clear()


def _has_wildcards(name: str) -> bool:
    return any(c in name for c in "*?[")


class TestbedBackend(base.BaseBackend):  # type: ignore[misc]  # testinfra has no types
    """Runs testinfra's commands on a testbed node through its agent."""

    NAME = "testbed"
    # pytest must not take this class for a test class.
    __test__ = False

    def __init__(
        self,
        hostname: str,
        composition: Optional[str] = None,
        timeout: Optional[Any] = None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        self.composition = composition
        #: Each command's time limit (before the timeout factor), from
        #: ``?timeout=SECONDS``; default: the client's (300 s).
        self.timeout = None if timeout is None else seconds(str(timeout))
        super().__init__(hostname, *args, **kwargs)

    @property
    def cluster(self) -> Cluster:
        return cluster_for(self.composition)

    @property
    def node(self) -> Node:
        return self.cluster[self.hostname]

    @property
    def role(self) -> str:
        """The node's role in its cluster."""
        return self.node.role

    @classmethod
    def get_hosts(cls, host: Optional[str], **kwargs: Any) -> List[str]:
        if not host:
            raise RuntimeError(
                "the testbed backend needs a node: testbed://NODE (or a pattern, testbed://compute*)"
            )
        if not _has_wildcards(host):
            return [host]
        cluster = cluster_for(kwargs.get("composition"))
        names = [n.name for n in cluster.select(host)]
        if not names:
            raise ConfigError(
                "testbed://{}: no node of cluster {} matches (nodes: {})".format(
                    host, cluster.name, ", ".join(n.name for n in cluster.nodes)
                )
            )
        return names

    def get_pytest_id(self) -> str:
        return "testbed://" + str(self.hostname)

    def get_encoding(self) -> str:
        # The images are Debian with UTF-8; asking the guest's Python
        # (which many images do not have) would cost commands.
        return "utf-8"

    def run(self, command: str, *args: str, **kwargs: Any) -> base.CommandResult:
        cmd = self.get_command(command, *args)
        r = self.node.run(cmd, self.timeout)
        return self.result(r.status, self.encode(cmd), r.stdout_bytes, r.stderr_bytes)


_CLASSPATH = "testbed.testinfra.TestbedBackend"


def register() -> None:
    """Makes ``testbed://`` known to testinfra (idempotent)."""
    testinfra.backend.BACKENDS.setdefault("testbed", _CLASSPATH)
    original = testinfra.backend.parse_hostspec
    if getattr(original, "_testbed_wrapper", False):
        return

    def parse_hostspec(hostspec: Any) -> Tuple[Any, Dict[str, Any]]:
        host, kw = original(hostspec)
        if kw.get("connection") == "testbed" and isinstance(hostspec, str):
            query = urllib.parse.parse_qs(urllib.parse.urlparse(hostspec).query)
            if "composition" in query:
                kw["composition"] = os.path.expanduser(query["composition"][0])
        return host, kw

    parse_hostspec._testbed_wrapper = True  # type: ignore[attr-defined]
    parse_hostspec.__doc__ = original.__doc__
    testinfra.backend.parse_hostspec = parse_hostspec


register()
