"""A running cluster and its nodes, driven through the supervisor's API.

The node methods have the NixOS test driver's names and semantics, and the
Rhai driver's time limits (``crates/driver/src/script.rs``): every timeout,
its default or the one given, is multiplied by the cluster's timeout factor.
Faults are context managers that undo what they did.

Nothing here prints: what happens is logged on the ``testbed`` logger
(commands at INFO with their status and duration), and failures raise
:class:`~testbed.errors.TestbedError` subclasses.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shlex
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import (
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    Union,
)

from . import cli
from .api import (
    ApiClient,
    ClusterStatus,
    Command,
    ExitStatus,
    FaultEvent,
    Json,
    LinkRule,
    NodeStatus,
    SnapshotInfo,
)
from .errors import (
    CommandFailed,
    ConfigError,
    NodeNotReady,
    NotRunning,
    SupervisorError,
    TestbedError,
    WaitFailed,
    WaitTimeout,
)
from .state import PathLike, StateDir, absolute, cluster_name, resolve_composition
from .timeouts import Timeouts, factor_from_environment
from .units import Duration, parse_loss, parse_rate, seconds

log = logging.getLogger("testbed")

# pytest leaves this module's frames out of a failing test's traceback, so
# that it points at the test's line (`pytest --full-trace` shows them).
__tracebackhide__ = True

#: Used when the cluster's spec cannot be read: the longest boot ``up``
#: allows by default (TCG), plus activation.
FALLBACK_BOOT_TIMEOUT = 1200.0


class UnknownNode(TestbedError, KeyError):
    """No node (or role) of that name in the cluster; the message lists
    those there are."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class CommandResult:
    """A command that ran on a node: how it ended and what it printed."""

    node: str
    command: Command
    exit: ExitStatus
    stdout_bytes: bytes
    stderr_bytes: bytes
    #: Seconds the call took.
    duration: float

    @property
    def status(self) -> int:
        """The exit code; 128 + N if killed by signal N; 124 if killed
        after its timeout."""
        return self.exit.status

    @property
    def timed_out(self) -> bool:
        return self.exit.timed_out

    @property
    def succeeded(self) -> bool:
        return self.exit.success

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", "replace")


def _command_text(command: Command) -> str:
    return command if isinstance(command, str) else shlex.join(list(command))


def _strip_node(node: str, message: str) -> str:
    """Supervisor messages often start with ``node NAME: ``; ours already
    name the node."""
    prefix = "node {}: ".format(node)
    return message[len(prefix) :] if message.startswith(prefix) else message


def _with_node(node: str, message: str) -> str:
    return message if node in message else "node {}: {}".format(node, message)


class Undo:
    """A fault that was applied, as a context manager that undoes it on
    exit (:meth:`undo` does it at once). Undoing twice does nothing.

    If undoing fails while an exception is already on its way out of the
    ``with`` block, the failure is logged and the original exception goes
    on; otherwise it is raised.
    """

    def __init__(self, description: str, undo: Callable[[], None]) -> None:
        self.description = description
        self._undo = undo
        self.undone = False

    def __repr__(self) -> str:
        return "<{} {}{}>".format(
            type(self).__name__, self.description, " (undone)" if self.undone else ""
        )

    def undo(self) -> None:
        if not self.undone:
            self.undone = True
            self._undo()

    def __enter__(self) -> "Undo":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        try:
            self.undo()
        except TestbedError as e:
            if exc_type is None:
                raise
            log.warning("could not undo %s: %s", self.description, e)


class Partition(Undo):
    """A partition in force; leaving the ``with`` block (or :meth:`undo`)
    removes the partition, and only it: blocked nodes and link rules stay."""

    def __init__(self, cluster: "Cluster", groups: List[List[str]]) -> None:
        self.groups = groups
        shown = " ".join("[{}]".format(",".join(g)) for g in groups)
        super().__init__("partition {}".format(shown), cluster._no_partition)


class Link:
    """The link between two nodes (both directions), as
    :meth:`Cluster.link` returns it. Each method changes the link at once
    and returns it, so calls chain; each changes only what it names (the
    switch merges changes). As a context manager, the link is cleared (no
    fault on it any more) when the block ends::

        with cluster.link("ctl", "compute1").delay("50ms").loss(0.01):
            ...
    """

    def __init__(self, cluster: "Cluster", a: str, b: str) -> None:
        self.cluster = cluster
        self.a = a
        self.b = b
        #: The link's rule after the last change, as the switch returned it.
        self.rule: Optional[LinkRule] = None

    def __repr__(self) -> str:
        return "<Link {}-{}>".format(self.a, self.b)

    def _change(self, label: str, change: Json) -> "Link":
        fault: Json = {"fault": "link", "a": self.a, "b": self.b}
        fault.update(change)
        log.info("link %s-%s %s", self.a, self.b, label)
        try:
            self.rule = self.cluster.api.fault(fault, self.cluster.timeouts.short_reply)
        except SupervisorError as e:
            raise SupervisorError(
                "link {} - {}: {}".format(self.a, self.b, e.message), e.node, e.unsupported
            ) from None
        return self

    def delay(self, delay: Duration, jitter: Optional[Duration] = None) -> "Link":
        """One-way delay (``"50ms"``, seconds, a timedelta); ``jitter``, at
        most the delay, varies it uniformly within ± that."""
        d = seconds(delay, "delay")
        change: Json = {"delay_ms": d * 1000.0}
        label = "delay {}".format(_fmt(d))
        if jitter is not None:
            j = seconds(jitter, "jitter")
            if j > d:
                raise ConfigError(
                    "jitter ({}) must not exceed the delay ({})".format(_fmt(j), _fmt(d))
                )
            change["jitter_ms"] = j * 1000.0
            label += " jitter {}".format(_fmt(j))
        return self._change(label, change)

    def loss(self, loss: Union[float, str]) -> "Link":
        """Fraction of frames dropped, ``0.1`` or ``"10%"``."""
        v = parse_loss(loss)
        return self._change("loss {}".format(v), {"loss": v})

    def rate(self, rate: Union[int, str]) -> "Link":
        """Bandwidth limit: ``"10mbit"``, ``"512kbit"``, or bits per
        second; ``0`` removes the limit."""
        bps = parse_rate(rate)
        label = "rate unlimited" if bps == 0 else "rate {}bit/s".format(bps)
        return self._change(label, {"rate_bps": bps})

    def down(self) -> "Link":
        """The link carries nothing (the other settings stay)."""
        return self._change("down", {"down": True})

    def up(self) -> "Link":
        """The link carries again (the other settings stay)."""
        return self._change("up", {"down": False})

    def clear(self) -> "Link":
        """Back to no fault on this link."""
        return self._change("clear", {"clear": True})

    def __enter__(self) -> "Link":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        try:
            self.clear()
        except TestbedError as e:
            if exc_type is None:
                raise
            log.warning("could not clear link %s-%s: %s", self.a, self.b, e)


def _fmt(secs: float) -> str:
    from .errors import format_seconds

    return format_seconds(secs)


class Node:
    """One node of a running cluster (``cluster["ctl"]``)."""

    def __init__(self, cluster: "Cluster", name: str, role: str) -> None:
        self.cluster = cluster
        self.name = name
        self.role = role

    def __repr__(self) -> str:
        return "<Node {} ({})>".format(self.name, self.role)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Node)
            and other.name == self.name
            and other.cluster.state_dir == self.cluster.state_dir
        )

    def __hash__(self) -> int:
        return hash((self.name, self.cluster.state_dir.path))

    @property
    def _t(self) -> Timeouts:
        return self.cluster.timeouts

    def _timeout(self, timeout: Optional[Duration], default: float) -> float:
        base = default if timeout is None else seconds(timeout)
        return self._t.scale(base)

    # -- state ---------------------------------------------------------

    def status(self) -> NodeStatus:
        """The node's current status (state, addresses, uptime...)."""
        status = self.cluster.status().node(self.name)
        if status is None:
            raise UnknownNode("node {} is gone from cluster {}".format(self.name, self.cluster.name))
        return status

    @property
    def state(self) -> str:
        """``starting``, ``booting``, ``activating``, ``ready``, ``failed``,
        ``stopped`` or ``paused``."""
        return self.status().state

    @property
    def console_log(self) -> Path:
        """The node's serial console log on the host."""
        return Path(self.status().console_log)

    @property
    def services(self) -> List[str]:
        """The services the node's activation starts, in order (from the
        cluster's spec)."""
        return list(self.cluster.services.get(self.name, []))

    # -- commands --------------------------------------------------------

    def run(
        self,
        command: Command,
        timeout: Optional[Duration] = None,
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: Optional[bytes] = None,
    ) -> CommandResult:
        """Runs ``command`` (a string, with ``sh -c``; or an argv list,
        directly) and returns how it ended and what it printed, whatever
        its status. ``timeout`` (default 300 s, times the factor) is the
        command's own limit: the agent kills it then (status 124)."""
        limit = self._timeout(timeout, self._t.command)
        return self._run(command, limit, env=env, cwd=cwd, stdin=stdin)

    def _run(
        self,
        command: Command,
        limit: float,
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: Optional[bytes] = None,
    ) -> CommandResult:
        text = _command_text(command)
        start = time.monotonic()
        try:
            out = self.cluster.api.exec(
                self.name,
                command,
                timeout=limit + self._t.reply_margin,
                command_timeout=limit,
                env=env,
                cwd=cwd,
                stdin=stdin,
            )
        except SupervisorError as e:
            log.info("%s$ %s -> not run: %s", self.name, text, e)
            raise SupervisorError(
                "cannot run `{}` on node {}: {}".format(text, self.name, _strip_node(self.name, e.message)),
                e.node,
                e.unsupported,
            ) from None
        duration = time.monotonic() - start
        log.info("%s$ %s -> %s (%.1fs)", self.name, text, out.status, duration)
        return CommandResult(self.name, command, out.status, out.stdout, out.stderr, duration)

    def execute(self, command: Command, timeout: Optional[Duration] = None) -> Tuple[int, str]:
        """Runs ``command``; returns ``(status, stdout)`` whatever the status
        (the exit code, 128 + N for signal N, 124 after the timeout)."""
        r = self.run(command, timeout)
        return r.status, r.stdout

    def _failed(self, what: str, r: CommandResult) -> CommandFailed:
        return CommandFailed(
            what,
            self.name,
            _command_text(r.command),
            r.status,
            r.stdout,
            r.stderr,
            r.timed_out,
            str(r.exit),
        )

    def succeed(self, *commands: Command, timeout: Optional[Duration] = None) -> str:
        """Runs each command in turn; each must exit with status 0. Returns
        their stdout, joined. A failure raises
        :class:`~testbed.errors.CommandFailed` with the node, the command,
        the status, stdout and stderr."""
        if not commands:
            raise TypeError("succeed() needs at least one command")
        output = ""
        for command in commands:
            r = self.run(command, timeout)
            if not r.succeeded:
                raise self._failed(
                    "command `{}` on node {} failed".format(_command_text(command), self.name), r
                )
            output += r.stdout
        return output

    def fail(self, *commands: Command, timeout: Optional[Duration] = None) -> str:
        """Runs each command in turn; each must run and exit non-zero. A
        command killed by its timeout, or one the shell cannot run (exit
        126/127), does not count. Returns their stdout, joined."""
        if not commands:
            raise TypeError("fail() needs at least one command")
        output = ""
        for command in commands:
            limit = self._timeout(timeout, self._t.command)
            r = self._run(command, limit)
            text = _command_text(command)
            if r.succeeded:
                raise self._failed(
                    "command `{}` on node {} succeeded but was expected to fail".format(
                        text, self.name
                    ),
                    r,
                )
            if r.timed_out:
                raise self._failed(
                    "command `{}` on node {} was expected to fail but was killed after its timeout of {}".format(
                        text, self.name, self._t.describe(limit)
                    ),
                    r,
                )
            if r.exit.code in (126, 127):
                # The shell's "not executable" / "not found": the command
                # never ran, so its failure proves nothing.
                raise self._failed(
                    "command `{}` on node {} could not run ({}); fail() expects a command that runs and fails".format(
                        text, self.name, "not found" if r.exit.code == 127 else "not executable"
                    ),
                    r,
                )
            output += r.stdout
        return output

    def _wait_until(self, command: Command, timeout: Optional[Duration], want_success: bool) -> str:
        limit = self._timeout(timeout, self._t.wait)
        deadline = time.monotonic() + limit
        verb = "succeed" if want_success else "fail"
        while True:
            left = deadline - time.monotonic()
            attempt = max(min(left, self._t.scale(self._t.command)), 1.0)
            r = self._run(command, attempt)
            if r.succeeded == want_success:
                return r.stdout
            if time.monotonic() + self._t.retry_interval >= deadline:
                raise WaitTimeout(
                    "command `{}` on node {} did not {} within {}; last attempt".format(
                        _command_text(command), self.name, verb, self._t.describe(limit)
                    ),
                    self.name,
                    _command_text(command),
                    r.status,
                    r.stdout,
                    r.stderr,
                    r.timed_out,
                    str(r.exit),
                )
            time.sleep(self._t.retry_interval)

    def wait_until_succeeds(self, command: Command, timeout: Optional[Duration] = None) -> str:
        """Runs ``command`` about every second until it succeeds (default
        limit 300 s, times the factor); returns its stdout. On timeout,
        :class:`~testbed.errors.WaitTimeout` shows the last attempt."""
        return self._wait_until(command, timeout, True)

    def wait_until_fails(self, command: Command, timeout: Optional[Duration] = None) -> str:
        """The same as :meth:`wait_until_succeeds`, until it fails."""
        return self._wait_until(command, timeout, False)

    def _wait_for(self, what: Json, label: str, timeout: Optional[Duration]) -> None:
        limit = self._timeout(timeout, self._t.wait)
        start = time.monotonic()
        try:
            self.cluster.api.wait(self.name, what, limit, limit + self._t.reply_margin)
        except SupervisorError as e:
            log.info("%s: %s failed (%.1fs)", self.name, label, time.monotonic() - start)
            raise WaitFailed(
                "{} on node {} (timeout {}): {}".format(
                    label, self.name, self._t.describe(limit), _strip_node(self.name, e.message)
                ),
                self.name,
                label,
            ) from None
        log.info("%s: %s (%.1fs)", self.name, label, time.monotonic() - start)

    def wait_for_unit(self, unit: str, timeout: Optional[Duration] = None) -> None:
        """Until the systemd unit is active; fails at once, with the unit's
        journal tail, if it fails."""
        self._wait_for({"for": "unit", "unit": unit}, "wait_for_unit {}".format(unit), timeout)

    def wait_for_open_port(self, port: int, timeout: Optional[Duration] = None) -> None:
        """Until a TCP connection to ``port`` on the node's 127.0.0.1
        succeeds."""
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError("port must be within 1..65535, got {!r}".format(port))
        self._wait_for({"for": "port", "port": port}, "wait_for_open_port {}".format(port), timeout)

    def wait_for_file(self, path: str, timeout: Optional[Duration] = None) -> None:
        """Until ``path`` exists in the node."""
        self._wait_for({"for": "file", "path": path}, "wait_for_file {}".format(path), timeout)

    # -- systemd ---------------------------------------------------------

    def systemctl(self, q: str, user: Optional[str] = None) -> Tuple[int, str]:
        """``systemctl q`` (as in the NixOS driver: ``q`` is one string of
        arguments); with ``user``, that user's manager. Returns
        ``(status, stdout)``."""
        if user is not None:
            # Commands run with sh (dash on Debian), so no bash quoting.
            inner = "XDG_RUNTIME_DIR=/run/user/$(id -u) systemctl --user {}".format(q)
            return self.execute(
                "su -l {} --shell /bin/sh -c {}".format(shlex.quote(user), shlex.quote(inner))
            )
        return self.execute("systemctl {}".format(q))

    def get_unit_info(self, unit: str, user: Optional[str] = None) -> Dict[str, str]:
        """Every property of ``unit`` (``systemctl show``), as a dict."""
        status, out = self.systemctl("--no-pager show {}".format(shlex.quote(unit)), user)
        if status != 0:
            raise CommandFailed(
                "retrieving the properties of unit {} on node {} failed".format(unit, self.name),
                self.name,
                "systemctl show {}".format(unit),
                status,
                out,
                "",
            )
        info: Dict[str, str] = {}
        for line in out.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                info[key] = value
        return info

    def get_unit_property(self, unit: str, property: str, user: Optional[str] = None) -> str:
        """One property of ``unit`` (``systemctl show --property=P``), e.g.
        ``get_unit_property("etcd", "ActiveState")``."""
        status, out = self.systemctl(
            "--no-pager show {} --property={}".format(shlex.quote(unit), shlex.quote(property)),
            user,
        )
        if status != 0:
            raise CommandFailed(
                "retrieving property {} of unit {} on node {} failed".format(
                    property, unit, self.name
                ),
                self.name,
                "systemctl show {} --property={}".format(unit, property),
                status,
                out,
                "",
            )
        for line in out.splitlines():
            key, sep, value = line.partition("=")
            if sep and key == property:
                return value
        raise TestbedError(
            "unit {} on node {} has no property {} (systemctl show printed {!r})".format(
                unit, self.name, property, out
            )
        )

    # -- files -----------------------------------------------------------

    def copy_to(self, host_path: PathLike, guest_path: str, owner: Optional[str] = None) -> None:
        """Copies a host file into the node, keeping its mode; a guest path
        ending in ``/`` gets the file's name. Parent folders are created.
        Relative host paths are relative to the current folder."""
        source = Path(host_path)
        if not guest_path.startswith("/"):
            raise ConfigError(
                "copy_to: the guest path must be absolute, got {!r}".format(guest_path)
            )
        try:
            info = source.stat()
            if stat.S_ISDIR(info.st_mode):
                raise ConfigError(
                    "copy_to: {} is a directory; copy_to copies single files".format(source)
                )
            data = source.read_bytes()
        except OSError as e:
            raise ConfigError("copy_to: cannot read {}: {}".format(source, e.strerror or e)) from None
        target = guest_path + source.name if guest_path.endswith("/") else guest_path
        try:
            self.cluster.api.put(
                self.name,
                target,
                data,
                stat.S_IMODE(info.st_mode),
                self._t.short_reply,
                owner=owner,
            )
        except SupervisorError as e:
            raise SupervisorError(
                "copy_to {} on node {}: {}".format(target, self.name, _strip_node(self.name, e.message)),
                e.node,
                e.unsupported,
            ) from None
        log.info("%s: copy_to %s %s", self.name, source, target)

    def copy_from(self, guest_path: str, host_path: PathLike) -> Path:
        """Copies a file out of the node, keeping its mode; into a host
        folder, it keeps its name. Parent folders are created. Returns the
        host path written."""
        try:
            mode, data = self.cluster.api.get(self.name, guest_path, self._t.short_reply)
        except SupervisorError as e:
            raise SupervisorError(
                "copy_from {} on node {}: {}".format(
                    guest_path, self.name, _strip_node(self.name, e.message)
                ),
                e.node,
                e.unsupported,
            ) from None
        target = Path(host_path)
        if target.is_dir():
            target = target / os.path.basename(guest_path.rstrip("/"))
        try:
            if str(target.parent):
                target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            os.chmod(target, mode & 0o777)
        except OSError as e:
            raise TestbedError("copy_from: cannot write {}: {}".format(target, e.strerror or e)) from None
        log.info("%s: copy_from %s %s", self.name, guest_path, target)
        return target

    def forward(self, port: int) -> socket.socket:
        """A TCP connection to ``port`` inside the node, through its agent
        (not the cluster network): a connected socket; close it when done."""
        return self.cluster.api.forward(self.name, port, self._t.short_reply)

    # -- power -----------------------------------------------------------

    def _power(self, action: str) -> None:
        start = time.monotonic()
        try:
            # A clean shutdown or reboot may wait for the guest up to the
            # boot timeout before the supervisor quits the machine.
            self.cluster.api.power(
                self.name, action, self.cluster.boot_timeout + self._t.reply_margin
            )
        except SupervisorError as e:
            raise type(e)(_with_node(self.name, e.message), e.node, e.unsupported) from None
        log.info("%s: %s (%.1fs)", self.name, action, time.monotonic() - start)

    def start(self) -> None:
        """Powers a stopped (or failed) node on and waits until it is
        ready; nothing if it already runs."""
        self.cluster._start_nodes([self.name], "start of {}".format(self.name))

    def shutdown(self) -> None:
        """Clean power-off."""
        self._power("shutdown")

    def crash(self) -> None:
        """Instant power loss."""
        self._power("crash")

    def reboot(self) -> None:
        """Clean reboot; waits until the node is ready again (a fresh
        activation)."""
        self._power("reboot")
        self.cluster._wait_ready([self.name], "reboot of {}".format(self.name))

    def pause(self) -> None:
        """Freezes the node's CPUs."""
        self._power("pause")

    def resume(self) -> None:
        """Thaws a paused node."""
        self._power("resume")

    # -- network ---------------------------------------------------------

    def block(self) -> Undo:
        """Cuts every frame to and from the node in the switch. Returns a
        context manager that unblocks it on exit::

            with ctl.block():
                ...
        """
        self.cluster._fault({"fault": "block", "node": self.name}, "block {}".format(self.name))
        return Undo("block {}".format(self.name), self.unblock)

    def unblock(self) -> None:
        """Restores the node's frames."""
        self.cluster._fault({"fault": "unblock", "node": self.name}, "unblock {}".format(self.name))


NodeArg = Union[Node, str]


class Cluster:
    """A running cluster: use :meth:`up` or :meth:`attach`.

    As a context manager, the cluster is taken down when the block ends if
    :meth:`up` brought it up and ``keep`` is false; a cluster that was
    already running (or attached to) stays up, as with ``testbed test``.
    """

    def __init__(
        self,
        composition: PathLike,
        *,
        state_dir: Optional[StateDir] = None,
        timeouts: Optional[Timeouts] = None,
        timeout_factor: Optional[float] = None,
        binary: Optional[str] = None,
    ) -> None:
        self.composition = Path(absolute(resolve_composition(composition)))
        self.state_dir = state_dir or StateDir.for_cluster(
            cluster_name(self.composition), self.composition
        )
        self.state_dir.check()
        self.api = ApiClient(self.state_dir.api_socket)
        self.binary = binary
        base = timeouts or Timeouts()
        status = self._first_status(base)
        self.name = status.cluster
        self.backend = status.backend
        self.accel = status.accel
        factor = timeout_factor if timeout_factor is not None else factor_from_environment(status.accel)
        if not factor > 0:
            raise ConfigError("timeout_factor must be above 0, got {}".format(factor))
        #: The time limits, with the cluster's timeout factor.
        self.timeouts = base.with_factor(factor)
        facts = self.state_dir.spec_facts()
        #: How long a node may take to boot and activate, as ``up`` set it.
        self.boot_timeout = facts.boot_timeout or FALLBACK_BOOT_TIMEOUT
        #: The services each node's activation starts, by node.
        self.services: Dict[str, List[str]] = facts.services
        self._nodes = [Node(self, n.name, n.role) for n in status.nodes]
        #: Whether the cluster was running before this object was made
        #: (then it is never taken down on exit).
        self.was_running = True
        #: Whether leaving the ``with`` block takes the cluster down.
        self.owned = False
        #: Leave the cluster running on exit even if this object brought it up.
        self.keep = False

    def _first_status(self, timeouts: Timeouts) -> ClusterStatus:
        try:
            return self.api.status(timeouts.short_reply)
        except NotRunning:
            raise NotRunning(
                str(self.state_dir.api_socket), cluster_name(self.composition)
            ) from None

    def __repr__(self) -> str:
        return "<Cluster {} ({} nodes, {} backend, {})>".format(
            self.name, len(self._nodes), self.backend, self.accel
        )

    # -- bringing up and down -------------------------------------------

    @classmethod
    def attach(
        cls,
        path: Optional[PathLike] = None,
        *,
        timeouts: Optional[Timeouts] = None,
        timeout_factor: Optional[float] = None,
        binary: Optional[str] = None,
    ) -> "Cluster":
        """The running cluster of the composition at ``path`` (a
        ``testbed.toml``, its folder, or ``None`` for ``./testbed.toml``);
        :class:`~testbed.errors.NotRunning` if it is not running."""
        return cls(
            path if path is not None else resolve_composition(None),
            timeouts=timeouts,
            timeout_factor=timeout_factor,
            binary=binary,
        )

    @staticmethod
    def is_running(path: Optional[PathLike] = None) -> bool:
        """Whether the cluster of the composition at ``path`` runs (its
        supervisor answers)."""
        state = StateDir.for_composition(path)
        state.check()
        try:
            ApiClient(state.api_socket).status(Timeouts().short_reply)
        except TestbedError:
            return False
        return True

    @classmethod
    def up(
        cls,
        path: Optional[PathLike] = None,
        *,
        scale: Optional[cli.Scale] = None,
        backend: Optional[str] = None,
        accel: Optional[str] = None,
        cold: bool = False,
        from_snapshot: Optional[str] = None,
        keep: bool = False,
        keep_failed: bool = False,
        timeout: Optional[Duration] = None,
        offline: bool = False,
        vendor: Sequence[str] = (),
        connect: Optional[str] = None,
        hosts: Sequence[str] = (),
        timeouts: Optional[Timeouts] = None,
        timeout_factor: Optional[float] = None,
        binary: Optional[str] = None,
    ) -> "Cluster":
        """Brings the cluster of the composition at ``path`` up with
        ``testbed up`` (building what is missing) unless it is running
        already, and returns it. The arguments are ``up``'s options:
        ``scale={"compute": 8}``, ``backend="qemu"``, ``accel``, ``cold``,
        ``from_snapshot`` (``--from``), ``keep_failed``, ``timeout`` (boot
        and activation per node), ``offline``, ``vendor``, ``connect``,
        ``hosts``.

        Used as a context manager, the cluster is taken down at the end
        unless ``keep`` is true or it was already running before (the rule
        of ``testbed test``): ``with Cluster.up("examples/etcd") as c:``.
        """
        file = resolve_composition(path)
        args = cli.up_args(
            absolute(file),
            scale=scale,
            backend=backend,
            accel=accel,
            cold=cold,
            from_snapshot=from_snapshot,
            keep_failed=keep_failed,
            timeout=timeout,
            offline=offline,
            vendor=vendor,
            connect=connect,
            hosts=hosts,
        )
        was_running = Cluster.is_running(file)
        if was_running:
            log.info(
                "cluster of %s is already running; it stays up afterwards", absolute(file)
            )
        else:
            cli.run(args, binary=binary)
        try:
            cluster = cls(file, timeouts=timeouts, timeout_factor=timeout_factor, binary=binary)
        except BaseException:
            if not was_running and not keep:
                try:
                    cli.run(["down", absolute(file)], binary=binary)
                except TestbedError as e:
                    log.warning("cannot take the cluster of %s down: %s", absolute(file), e)
            raise
        cluster.was_running = was_running
        cluster.owned = not was_running
        cluster.keep = keep
        return cluster

    @staticmethod
    def build(
        path: Optional[PathLike] = None,
        *,
        offline: bool = False,
        vendor: Sequence[str] = (),
        binary: Optional[str] = None,
    ) -> str:
        """Builds every role's image (``testbed build``); returns its
        output. Nothing to do when the store has them."""
        args = ["build", absolute(resolve_composition(path))]
        if offline:
            args.append("--offline")
        for folder in vendor:
            args += ["--vendor", os.fspath(folder)]
        return cli.run(args, binary=binary)

    def down(self) -> None:
        """Stops every node and removes everything the cluster left on the
        host (``testbed down``)."""
        cli.run(["down", str(self.composition)], binary=self.binary)
        self.owned = False

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self.owned and not self.keep:
            try:
                self.down()
            except TestbedError as e:
                if exc_type is None:
                    raise
                log.warning("cannot take cluster %s down: %s", self.name, e)
        elif self.owned:
            log.info("cluster %s is left running; `testbed down %s` removes it", self.name, self.composition)

    # -- nodes -----------------------------------------------------------

    @property
    def nodes(self) -> List[Node]:
        """Every node, in the cluster's order."""
        return list(self._nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(list(self._nodes))

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, name: object) -> bool:
        if isinstance(name, Node):
            name = name.name
        return any(n.name == name for n in self._nodes)

    def __getitem__(self, name: str) -> Node:
        return self.node(name)

    def node(self, name: str) -> Node:
        """The node called ``name``; :class:`UnknownNode` (a ``KeyError``)
        lists the cluster's nodes if there is none."""
        for n in self._nodes:
            if n.name == name:
                return n
        raise UnknownNode(
            "no node {} in cluster {} (nodes: {})".format(
                name, self.name, ", ".join(n.name for n in self._nodes)
            )
        )

    @property
    def roles(self) -> List[str]:
        """The roles, in the cluster's order."""
        out: List[str] = []
        for n in self._nodes:
            if n.role not in out:
                out.append(n.role)
        return out

    def role(self, name: str) -> List[Node]:
        """The role's nodes, in order."""
        nodes = [n for n in self._nodes if n.role == name]
        if not nodes:
            raise UnknownNode(
                "no role {} in cluster {} (roles: {})".format(name, self.name, ", ".join(self.roles))
            )
        return nodes

    def select(self, pattern: str) -> List[Node]:
        """The nodes whose names match the shell pattern ``pattern``
        (``compute*``), in order."""
        return [n for n in self._nodes if fnmatch.fnmatchcase(n.name, pattern)]

    def _name(self, node: NodeArg) -> str:
        if isinstance(node, Node):
            return node.name
        if isinstance(node, str):
            return self.node(node).name
        raise TypeError("expected a node or a node's name, got {}".format(type(node).__name__))

    # -- the cluster -----------------------------------------------------

    def status(self) -> ClusterStatus:
        """The cluster's status: every node's state, addresses, uptime."""
        return self.api.status(self.timeouts.short_reply)

    def watch(
        self,
        on_node: Optional[Callable[[NodeStatus], None]] = None,
        timeout: Optional[Duration] = None,
    ) -> ClusterStatus:
        """Calls ``on_node`` with each node's state as it changes until
        every node is ready, failed or stopped; returns the status then.
        ``timeout`` (default: the boot timeout, times the factor) bounds the
        wait for each change."""
        limit = self.timeouts.scale(self.boot_timeout if timeout is None else seconds(timeout))
        return self.api.watch(limit, on_node)

    @property
    def timeout_factor(self) -> float:
        return self.timeouts.factor

    def _wait_ready(self, names: List[str], during: str) -> None:
        limit = self.timeouts.scale(self.boot_timeout)
        deadline = time.monotonic() + limit
        while True:
            status = self.status()
            pending = []
            for name in names:
                node = status.node(name)
                if node is None:
                    raise NodeNotReady("{}: node {} is gone from the cluster".format(during, name), name)
                if node.state == "ready":
                    continue
                if node.state in ("failed", "stopped"):
                    raise NodeNotReady(
                        "node {} did not come up ({}): {}; console log: {}".format(
                            name, node.state, node.message or "no details", node.console_log
                        ),
                        name,
                        node.state,
                        node.console_log,
                    )
                if node.state == "paused":
                    raise NodeNotReady(
                        "node {} is paused; resume it before waiting for it".format(name),
                        name,
                        node.state,
                        node.console_log,
                    )
                pending.append("{} ({})".format(name, node.state))
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise NodeNotReady(
                    "{}: not ready within {}: {}".format(
                        during, self.timeouts.describe(limit), ", ".join(pending)
                    ),
                    pending[0].split(" ")[0],
                )
            time.sleep(min(self.timeouts.poll_interval, limit))

    def _start_nodes(self, names: List[str], during: str) -> None:
        status = self.status()
        for name in names:
            node = status.node(name)
            if node is not None and node.state in ("stopped", "failed"):
                self.node(name)._power("start")
        self._wait_ready(names, during)

    def start_all(self) -> None:
        """Starts every stopped (or failed) node and waits until all are
        ready."""
        self._start_nodes([n.name for n in self._nodes], "start_all")

    def wait_until_ready(self) -> None:
        """Waits until every node is ready (the boot timeout, times the
        factor); fails at once if one failed or stopped."""
        self._wait_ready([n.name for n in self._nodes], "waiting for the cluster")

    # -- faults ----------------------------------------------------------

    def _fault(self, fault: Json, label: str) -> Optional[LinkRule]:
        log.info("%s", label)
        return self.api.fault(fault, self.timeouts.short_reply)

    def _no_partition(self) -> None:
        # A partition of no groups puts every node in one: no partition.
        self._fault({"fault": "partition", "groups": []}, "partition removed")

    def partition(self, *groups: Sequence[NodeArg]) -> Partition:
        """Nodes in different groups cannot reach each other; the nodes
        listed in no group form one more group. A new partition replaces the
        old one. Applies at once; as a context manager, the partition is
        removed when the block ends::

            with cluster.partition(["ctl"], ["compute1", "compute2"]):
                ...
        """
        if len(groups) == 1 and groups[0] and all(
            not isinstance(g, (str, Node)) for g in groups[0]
        ):
            # partition([[a], [b, c]]), the Rhai form.
            groups = tuple(groups[0])  # type: ignore[arg-type]
        names: List[List[str]] = []
        for group in groups:
            if isinstance(group, (str, Node)):
                raise TypeError(
                    "partition takes groups of nodes, e.g. partition([\"ctl\"], [\"compute1\"]); got {!r}".format(
                        group
                    )
                )
            names.append([self._name(n) for n in group])
        p = Partition(self, names)
        self._fault({"fault": "partition", "groups": names}, p.description)
        return p

    def heal(self) -> None:
        """Removes every fault: the partition, blocked nodes, link rules."""
        self._fault({"fault": "heal"}, "heal")

    def link(self, a: NodeArg, b: NodeArg) -> Link:
        """The link between two nodes; see :class:`Link`."""
        na, nb = self._name(a), self._name(b)
        if na == nb:
            raise ConfigError("link needs two different nodes, got {} twice".format(na))
        return Link(self, na, nb)

    def block(self, node: NodeArg) -> Undo:
        """``cluster["n"].block()``."""
        return self.node(self._name(node)).block()

    def fault_history(self) -> List[FaultEvent]:
        """The switch's fault changes so far (``str()`` of each is the
        change, e.g. ``partition [ctl] [compute1]``)."""
        return self.api.history(self.timeouts.short_reply)

    # -- snapshots -------------------------------------------------------

    def snapshot(self, name: str) -> SnapshotInfo:
        """Saves the whole cluster as its snapshot ``name`` (QEMU): every
        node's memory and writable layer, and the faults in force; returns
        once every node answers again."""
        log.info("snapshot %s", name)
        return self.api.snapshot(name, self.boot_timeout + self.timeouts.reply_margin)

    def restore(self, name: str) -> SnapshotInfo:
        """Brings every node back to the snapshot ``name`` saved from this
        same cluster."""
        log.info("restore %s", name)
        return self.api.restore(name, self.boot_timeout + self.timeouts.reply_margin)

    # -- artifacts -------------------------------------------------------

    def collect_artifacts(self, dest: PathLike) -> "Artifacts":
        """Writes every node's console log, state and boot journal, the
        cluster's status and the fault history into ``dest``; see
        :func:`testbed.artifacts.collect`."""
        from .artifacts import collect

        return collect(self, Path(dest))


from .artifacts import Artifacts  # noqa: E402  (used in annotations above)
