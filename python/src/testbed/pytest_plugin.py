"""The pytest plugin (entry point ``pytest11``: loaded by any pytest that
can import this package).

- The ``testbed_cluster`` fixture: a running :class:`~testbed.Cluster`,
  brought up with ``testbed up`` if it is not running, configured by the
  ``testbed`` marker or by options, and shared: by default one cluster serves
  every test of the session (``scope`` = ``module`` or ``function`` takes it
  down sooner). A cluster the plugin brought up is taken down at the end of
  its scope, unless ``keep`` (or ``keep_on_failure`` and a test using it
  failed); one that was running before stays up, as with ``testbed test``.
- On a failing test that used a cluster (the fixture, or a fixture value
  that is a cluster, a node, or a testinfra host of the testbed backend),
  every node's console log, state and boot journal are collected into the
  artifacts folder (default ``testbed-artifacts/`` beside the composition,
  replaced at the first failure of a session; one subfolder per test), their
  last lines are attached to the test's report, and the folder is recorded
  as the ``testbed_artifacts`` property (in ``--junitxml`` reports).
- The testinfra backend (``testbed://NODE``) is registered, and
  ``--testbed-composition`` is its default composition.

Configuration, first found wins: the marker's arguments, then the command
line, then ``$TESTBED_COMPOSITION`` (the composition only), then the ini
file::

    @pytest.mark.testbed(path="examples/etcd", scale={"etcd": 5}, backend="qemu")
    def test_x(testbed_cluster): ...

    # pytest.ini / pyproject.toml [tool.pytest.ini_options]
    testbed_composition = examples/slurm
    testbed_scale = compute=2
    testbed_keep_on_failure = true

A marker's ``path`` is relative to the test file's folder, an ini path to
the ini file's, an option or variable to the current folder. Fixtures of a
wider scope get the cluster with :func:`cluster_for` (``request`` of any
scope; the marker is read from that scope's node).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Generator, List, Optional, Set, Tuple

import pytest

from .cluster import Cluster, Node
from .errors import ConfigError, TestbedError, tail
from .state import absolute, resolve_composition

log = logging.getLogger("testbed.pytest")

#: The plugin object's name in pytest's plugin manager.
PLUGIN_NAME = "testbed-clusters"

#: How many lines of each log a failing test's report shows.
REPORT_LINES = 40

_SCOPES = ("session", "module", "function")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("testbed", "testbed clusters")
    group.addoption(
        "--testbed-composition",
        dest="testbed_composition",
        metavar="PATH",
        help="the composition (a testbed.toml or its folder) of testbed_cluster and of testbed:// hosts",
    )
    group.addoption(
        "--testbed-scale",
        dest="testbed_scale",
        action="append",
        default=[],
        metavar="ROLE=N",
        help="a role's node count when the plugin brings the cluster up (repeatable)",
    )
    group.addoption("--testbed-backend", dest="testbed_backend", metavar="NAME", help="qemu, podman, docker or libvirt")
    group.addoption("--testbed-accel", dest="testbed_accel", metavar="ACCEL", help="auto, kvm or tcg")
    group.addoption(
        "--testbed-keep",
        dest="testbed_keep",
        action="store_true",
        default=False,
        help="leave clusters the plugin brought up running afterwards",
    )
    group.addoption(
        "--testbed-keep-on-failure",
        dest="testbed_keep_on_failure",
        action="store_true",
        default=False,
        help="leave a cluster running if a test that used it failed",
    )
    group.addoption(
        "--testbed-artifacts",
        dest="testbed_artifacts",
        metavar="DIR",
        help="where failed tests' logs go (default: testbed-artifacts/ beside the composition)",
    )
    parser.addini("testbed_composition", "the composition of testbed_cluster and testbed:// hosts", default=None)
    parser.addini("testbed_scale", "role counts, ROLE=N, one per line", type="linelist", default=[])
    parser.addini("testbed_backend", "qemu, podman, docker or libvirt", default=None)
    parser.addini("testbed_accel", "auto, kvm or tcg", default=None)
    parser.addini("testbed_keep", "leave clusters running afterwards", type="bool", default=False)
    parser.addini(
        "testbed_keep_on_failure", "leave a cluster running if a test that used it failed", type="bool", default=False
    )
    parser.addini("testbed_artifacts", "where failed tests' logs go", default=None)
    parser.addini("testbed_scope", "session (default), module or function", default="session")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "testbed(path=None, scale=None, backend=None, accel=None, cold=False, from_snapshot=None, "
        "timeout=None, keep=False, keep_on_failure=False, scope=None): the cluster testbed_cluster gives",
    )
    plugin = ClusterManager(config)
    config.pluginmanager.register(plugin, PLUGIN_NAME)
    try:
        from . import testinfra as backend
    except ImportError:  # testinfra is not installed: nothing to register
        return
    default = plugin.default_composition()
    backend.set_default_composition(str(default) if default is not None else None)


def pytest_unconfigure(config: pytest.Config) -> None:
    try:
        from . import testinfra as backend
    except ImportError:
        return
    backend.set_default_composition(None)
    backend.forget_clusters()


@dataclass(frozen=True)
class Settings:
    """How a test wants its cluster."""

    composition: Path
    scale: Tuple[str, ...] = ()
    backend: Optional[str] = None
    accel: Optional[str] = None
    cold: bool = False
    from_snapshot: Optional[str] = None
    timeout: Optional[str] = None
    keep: bool = False
    keep_on_failure: bool = False
    scope: str = "session"

    def up_options(self) -> Tuple[Any, ...]:
        """What must match for a running cluster to be reused."""
        return (self.scale, self.backend, self.accel, self.cold, self.from_snapshot, self.timeout)


@dataclass
class _Held:
    settings: Settings
    cluster: Cluster
    failed: bool = False
    users: int = 0


@dataclass
class _Notes:
    left_running: List[str] = field(default_factory=list)
    artifacts: List[str] = field(default_factory=list)


def _scale_items(value: Any) -> Tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, dict):
        return tuple("{}={}".format(k, v) for k, v in value.items())
    if isinstance(value, str):
        return tuple(v for v in value.replace(",", " ").split() if v)
    return tuple(str(v) for v in value)


class ClusterManager:
    """The clusters of a pytest session: brought up on first use, shared,
    and taken down at the end of their scope."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.held: Dict[Path, _Held] = {}
        self.cleared: Set[Path] = set()
        self.notes = _Notes()

    # -- configuration -----------------------------------------------

    def _ini_dir(self) -> Path:
        inipath = getattr(self.config, "inipath", None)
        return Path(inipath).parent if inipath else Path(self.config.rootpath)

    def _invocation_dir(self) -> Path:
        return Path(self.config.invocation_params.dir)

    def default_composition(self) -> Optional[Path]:
        """The composition the options, the variable or the ini file name;
        None if none does."""
        option = self.config.getoption("testbed_composition")
        if option:
            return self._invocation_dir() / os.path.expanduser(str(option))
        env = os.environ.get("TESTBED_COMPOSITION")
        if env:
            return Path(os.path.expanduser(env))
        ini = self.config.getini("testbed_composition")
        if ini:
            return self._ini_dir() / os.path.expanduser(str(ini))
        return None

    def settings(self, node: Any) -> Settings:
        """The settings for a test (or a module, or the session): the
        closest ``testbed`` marker, then options, then the ini file."""
        marker = node.get_closest_marker("testbed") if hasattr(node, "get_closest_marker") else None
        kwargs: Dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
        if marker is not None and marker.args:
            if len(marker.args) > 1 or "path" in kwargs:
                raise ConfigError("the testbed marker takes one path: @pytest.mark.testbed(path=...)")
            kwargs["path"] = marker.args[0]
        known = {
            "path", "scale", "backend", "accel", "cold", "from_snapshot",
            "timeout", "keep", "keep_on_failure", "scope",
        }  # fmt: skip
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ConfigError(
                "unknown argument{} of the testbed marker: {} (known: {})".format(
                    "s" if len(unknown) > 1 else "", ", ".join(unknown), ", ".join(sorted(known))
                )
            )
        config = self.config
        if kwargs.get("path") is not None:
            path = Path(os.path.expanduser(str(kwargs["path"])))
            if not path.is_absolute():
                file = getattr(node, "path", None) or getattr(node, "fspath", None)
                base = Path(str(file)).parent if file is not None and Path(str(file)).is_file() else self._invocation_dir()
                path = base / path
        else:
            path = self.default_composition() or self._invocation_dir()
        composition = Path(absolute(resolve_composition(path)))
        scale = _scale_items(kwargs.get("scale")) or tuple(config.getoption("testbed_scale") or ()) or tuple(
            config.getini("testbed_scale") or ()
        )
        scope = kwargs.get("scope") or config.getini("testbed_scope") or "session"
        if scope not in _SCOPES:
            raise ConfigError("testbed scope must be one of {}, got {!r}".format(", ".join(_SCOPES), scope))
        timeout = kwargs.get("timeout")
        return Settings(
            composition=composition,
            scale=scale,
            backend=kwargs.get("backend") or config.getoption("testbed_backend") or config.getini("testbed_backend") or None,
            accel=kwargs.get("accel") or config.getoption("testbed_accel") or config.getini("testbed_accel") or None,
            cold=bool(kwargs.get("cold", False)),
            from_snapshot=kwargs.get("from_snapshot"),
            timeout=None if timeout is None else str(timeout),
            keep=bool(kwargs.get("keep")) or bool(config.getoption("testbed_keep")) or bool(config.getini("testbed_keep")),
            keep_on_failure=bool(kwargs.get("keep_on_failure"))
            or bool(config.getoption("testbed_keep_on_failure"))
            or bool(config.getini("testbed_keep_on_failure")),
            scope=scope,
        )

    # -- clusters ------------------------------------------------------

    def acquire(self, settings: Settings) -> Cluster:
        """The cluster for ``settings``: the one held already if it was
        brought up the same way, else brought up (or attached to, if it
        runs)."""
        held = self.held.get(settings.composition)
        if held is not None:
            if held.settings.up_options() == settings.up_options():
                held.users += 1
                return held.cluster
            if not held.cluster.owned:
                raise ConfigError(
                    "the cluster of {} is running (it was before the tests started), so it cannot be "
                    "brought up again with other settings ({} instead of {}); take it down first".format(
                        settings.composition, _describe(settings), _describe(held.settings)
                    )
                )
            log.info("cluster %s: other settings wanted; taking it down to bring it up again", held.cluster.name)
            self._release(held, force=True)
        cluster = Cluster.up(
            settings.composition,
            scale=list(settings.scale) or None,
            backend=settings.backend,
            accel=settings.accel,
            cold=settings.cold,
            from_snapshot=settings.from_snapshot,
            timeout=settings.timeout,
            keep=True,  # taken down by release(), which knows about failures
        )
        self.held[settings.composition] = _Held(settings, cluster, users=1)
        return cluster

    def release(self, composition: Path) -> None:
        held = self.held.get(composition)
        if held is not None:
            self._release(held)

    def _release(self, held: _Held, force: bool = False) -> None:
        self.held.pop(held.settings.composition, None)
        cluster = held.cluster
        if not cluster.owned:
            return
        keep = held.settings.keep or (held.settings.keep_on_failure and held.failed)
        if keep and not force:
            why = "as asked" if held.settings.keep else "a test that used it failed"
            self.notes.left_running.append(
                "cluster {} left running ({}); `testbed down {}` removes it".format(
                    cluster.name, why, held.settings.composition
                )
            )
            return
        cluster.down()

    def mark_failed(self, cluster: Cluster) -> None:
        # A testinfra host's cluster is another object for the same cluster.
        for held in self.held.values():
            if held.cluster.state_dir == cluster.state_dir:
                held.failed = True

    # -- artifacts -----------------------------------------------------

    def artifacts_root(self, cluster: Cluster) -> Path:
        explicit = self.config.getoption("testbed_artifacts")
        if explicit:
            return self._invocation_dir() / str(explicit)
        ini = self.config.getini("testbed_artifacts")
        if ini:
            return self._ini_dir() / str(ini)
        root = cluster.composition.parent / "testbed-artifacts"
        if root not in self.cleared:
            # Ours alone, as with `testbed test`: an earlier run's leftovers
            # would mislead.
            self.cleared.add(root)
            shutil.rmtree(root, ignore_errors=True)
        return root

    # -- hooks -----------------------------------------------------------

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: Any) -> Generator[None, Any, None]:
        outcome = yield
        report = outcome.get_result()
        if not report.failed or report.when not in ("setup", "call"):
            return
        clusters = _clusters_of(item)
        for cluster in clusters:
            self.mark_failed(cluster)
            self._attach_artifacts(item, report, cluster, several=len(clusters) > 1)

    def _attach_artifacts(self, item: pytest.Item, report: Any, cluster: Cluster, several: bool) -> None:
        name = _safe_name(item.nodeid)
        dest = self.artifacts_root(cluster) / name
        if several:
            dest = dest / cluster.name
        shutil.rmtree(dest, ignore_errors=True)
        try:
            artifacts = cluster.collect_artifacts(dest)
        except TestbedError as e:
            report.sections.append(("testbed artifacts", "cannot collect them: {}".format(e)))
            return
        self.notes.artifacts.append("{}: {}".format(item.nodeid, dest))
        # junitxml writes the properties of the teardown's report, which
        # takes them from the item.
        item.user_properties.append(("testbed_artifacts", str(dest)))
        for node, path in artifacts.consoles.items():
            report.sections.append(
                ("testbed {} console log (last lines)".format(node), _tail_of(path))
            )
        for node, path in artifacts.journals.items():
            report.sections.append(("testbed {} journal (last lines)".format(node), _tail_of(path)))
        summary = "{}\n{}".format(dest, "\n".join(artifacts.problems) or "everything was collected")
        report.sections.append(("testbed artifacts of cluster {}".format(cluster.name), summary))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # Clusters still held (a scope's finalizer did not run, as when the
        # session is interrupted) are released here.
        for held in list(self.held.values()):
            try:
                self._release(held)
            except TestbedError as e:
                self.notes.left_running.append("cannot take cluster {} down: {}".format(held.cluster.name, e))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not (self.notes.artifacts or self.notes.left_running):
            return
        terminalreporter.section("testbed")
        for line in self.notes.artifacts:
            terminalreporter.write_line("artifacts of {}".format(line))
        for line in self.notes.left_running:
            terminalreporter.write_line(line)


def _describe(s: Settings) -> str:
    parts = ["scale " + " ".join(s.scale) if s.scale else "the composition's counts"]
    for key in ("backend", "accel", "from_snapshot", "timeout"):
        value = getattr(s, key)
        if value:
            parts.append("{} {}".format(key, value))
    if s.cold:
        parts.append("cold")
    return ", ".join(parts)


def _safe_name(nodeid: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.=-]+", "_", nodeid).strip("_")
    return name[:150] or "test"


def _tail_of(path: Path) -> str:
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except OSError as e:
        return "cannot read {}: {}".format(path, e.strerror or e)
    return tail(text.rstrip("\n"), REPORT_LINES) or "(empty)"


def _clusters_of(item: pytest.Item) -> List[Cluster]:
    """The clusters a test used: fixture values that are clusters, nodes,
    or testinfra hosts of the testbed backend."""
    found: List[Cluster] = []
    values = list(getattr(item, "funcargs", {}).values())
    for value in values:
        cluster = None
        if isinstance(value, Cluster):
            cluster = value
        elif isinstance(value, Node):
            cluster = value.cluster
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Node) for v in value):
            cluster = value[0].cluster
        else:
            backend: Any = getattr(value, "backend", None)
            if backend is not None and type(backend).__name__ == "TestbedBackend":
                try:
                    cluster = backend.cluster
                except TestbedError:
                    cluster = None
        if cluster is not None and all(c is not cluster for c in found):
            found.append(cluster)
    return found


def _manager(config: pytest.Config) -> ClusterManager:
    plugin = config.pluginmanager.get_plugin(PLUGIN_NAME)
    assert isinstance(plugin, ClusterManager)
    return plugin


def cluster_for(request: pytest.FixtureRequest) -> Cluster:
    """The cluster for the fixture ``request`` (of any scope): the
    ``testbed`` marker closest to ``request.node`` (the test, the module or
    the session, as the fixture's scope says), else the options. It is
    released (taken down if the plugin brought it up and nothing says to
    keep it) at the end of the settings' ``scope``; a fixture of a wider
    scope keeps it for its own scope (a module fixture: to the end of the
    module, even with ``scope="function"``)."""
    manager = _manager(request.config)
    settings = manager.settings(request.node)
    cluster = manager.acquire(settings)
    if settings.scope == "function" and request.scope == "function":
        request.addfinalizer(lambda: manager.release(settings.composition))
    elif settings.scope in ("module", "function"):
        module = request.node.getparent(pytest.Module) if request.scope != "session" else None
        (module or request.session).addfinalizer(lambda: manager.release(settings.composition))
    else:
        request.session.addfinalizer(lambda: manager.release(settings.composition))
    return cluster


@pytest.fixture
def testbed_cluster(request: pytest.FixtureRequest) -> Cluster:
    """A running testbed cluster (see :mod:`testbed.pytest_plugin`)."""
    return cluster_for(request)
