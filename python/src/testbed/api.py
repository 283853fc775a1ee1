"""The supervisor's JSON API: its values, and a client that speaks it.

One unix stream socket per cluster (``api.sock`` in the state directory).
Each message is one line of JSON. A client sends a request (``{"op": ...}``)
and reads reply lines (``{"type": ...}``): most requests get one reply;
``watch`` and ``exec`` stream several and end with a terminal one
(``settled``, ``exited`` or ``error``); ``forward`` answers ``ok`` and the
connection then carries the raw bytes of a TCP connection to the guest.
Byte strings are base64. The authoritative definition is
``crates/api/src/lib.rs``; this module mirrors it.

:class:`ApiClient` opens one connection per call, as the Rust driver does:
calls are independent, any number of threads may make them at once, and a
call that times out leaves nothing behind. Every read has a time limit
(the request's own timeout plus a margin), so a supervisor that never
answers gives :class:`~testbed.errors.SupervisorTimeout`, never a hang.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import (
    NotRunning,
    ProtocolError,
    SupervisorError,
    SupervisorTimeout,
    TestbedError,
    Unsupported,
    describe_exit,
)

log = logging.getLogger("testbed.api")

# pytest leaves this module's frames out of a failing test's traceback, so
# that it points at the test's line (`pytest --full-trace` shows them).
__tracebackhide__ = True

#: A JSON object.
Json = Dict[str, Any]

#: Node states, as the supervisor names them.
NODE_STATES = ("starting", "booting", "activating", "ready", "failed", "stopped", "paused")

#: Power actions a node accepts.
POWER_ACTIONS = ("start", "shutdown", "crash", "reboot", "pause", "resume")


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise ProtocolError("supervisor sent an invalid reply: {} is not base64 text".format(what))
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ProtocolError(
            "supervisor sent an invalid reply: {} is not valid base64".format(what)
        ) from None


def _get(obj: Json, key: str, kind: Any, what: str, default: Any = ...) -> Any:
    if key not in obj or obj[key] is None:
        if default is not ...:
            return default
        raise ProtocolError(
            "supervisor sent an invalid reply: {} has no {}".format(what, key)
        )
    value = obj[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(
            "supervisor sent an invalid reply: {}.{} is {!r}".format(what, key, value)
        )
    return value


@dataclass(frozen=True)
class ExitStatus:
    """How a command ended: its exit code, the signal that killed it, or
    whether the agent killed it after its timeout."""

    code: Optional[int]
    signal: Optional[int] = None
    timed_out: bool = False

    @classmethod
    def from_json(cls, obj: Any) -> "ExitStatus":
        if not isinstance(obj, dict):
            raise ProtocolError("supervisor sent an invalid reply: exit status is {!r}".format(obj))
        return cls(
            code=_get(obj, "code", int, "exit status", None),
            signal=_get(obj, "signal", int, "exit status", None),
            timed_out=_get(obj, "timed_out", bool, "exit status", False),
        )

    @property
    def success(self) -> bool:
        return self.code == 0 and not self.timed_out

    @property
    def status(self) -> int:
        """The status as ``testbed exec`` exits with it: the code, 128 + N
        for signal N, 124 after the timeout (-1 if unknown)."""
        if self.timed_out:
            return 124
        if self.code is not None:
            return self.code
        if self.signal is not None:
            return 128 + self.signal
        return -1

    def __str__(self) -> str:
        return describe_exit(self.code, self.signal, self.timed_out)


@dataclass(frozen=True)
class NodeStatus:
    """One node, as ``status`` shows it."""

    name: str
    role: str
    #: ``starting``, ``booting``, ``activating``, ``ready``, ``failed``,
    #: ``stopped`` or ``paused``.
    state: str
    #: ``10.44.0.11/24 (lan)`` style, one per NIC.
    addresses: List[str]
    console_log: str
    pid: Optional[int] = None
    uptime_ms: Optional[int] = None
    #: Why the node failed or stopped.
    message: Optional[str] = None
    snapshot: Optional[str] = None
    warning: Optional[str] = None

    @classmethod
    def from_json(cls, obj: Any) -> "NodeStatus":
        if not isinstance(obj, dict):
            raise ProtocolError("supervisor sent an invalid reply: node is {!r}".format(obj))
        what = "node"
        state = _get(obj, "state", str, what)
        if state not in NODE_STATES:
            raise ProtocolError("supervisor sent an invalid reply: unknown node state {!r}".format(state))
        return cls(
            name=_get(obj, "name", str, what),
            role=_get(obj, "role", str, what),
            state=state,
            addresses=list(_get(obj, "addresses", list, what, [])),
            console_log=_get(obj, "console_log", str, what),
            pid=_get(obj, "pid", int, what, None),
            uptime_ms=_get(obj, "uptime_ms", int, what, None),
            message=_get(obj, "message", str, what, None),
            snapshot=_get(obj, "snapshot", str, what, None),
            warning=_get(obj, "warning", str, what, None),
        )

    def to_json(self) -> Json:
        out: Json = {
            "name": self.name,
            "role": self.role,
            "state": self.state,
            "addresses": list(self.addresses),
        }
        for key in ("pid", "uptime_ms", "message", "snapshot", "warning"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out["console_log"] = self.console_log
        return out


@dataclass(frozen=True)
class ClusterStatus:
    """The whole cluster, as ``status`` shows it."""

    cluster: str
    composition: str
    state_dir: str
    backend: str
    #: ``kvm``, ``tcg``, or ``none`` for containers.
    accel: str
    supervisor_pid: int
    nodes: List[NodeStatus]
    #: Whether the nodes have an interactive serial console.
    console: bool = False

    @classmethod
    def from_json(cls, obj: Json) -> "ClusterStatus":
        what = "status"
        nodes = _get(obj, "nodes", list, what)
        return cls(
            cluster=_get(obj, "cluster", str, what),
            composition=_get(obj, "composition", str, what),
            state_dir=_get(obj, "state_dir", str, what),
            backend=_get(obj, "backend", str, what),
            accel=_get(obj, "accel", str, what),
            supervisor_pid=_get(obj, "supervisor_pid", int, what),
            console=_get(obj, "console", bool, what, False),
            nodes=[NodeStatus.from_json(n) for n in nodes],
        )

    def to_json(self) -> Json:
        return {
            "cluster": self.cluster,
            "composition": self.composition,
            "state_dir": self.state_dir,
            "backend": self.backend,
            "accel": self.accel,
            "supervisor_pid": self.supervisor_pid,
            "console": self.console,
            "nodes": [n.to_json() for n in self.nodes],
        }

    def node(self, name: str) -> Optional[NodeStatus]:
        for n in self.nodes:
            if n.name == name:
                return n
        return None


@dataclass(frozen=True)
class LinkRule:
    """A rule on the link between two nodes (both directions)."""

    down: bool = False
    #: Fraction of frames dropped, 0.0 to 1.0.
    loss: float = 0.0
    #: Added one-way delay, in milliseconds.
    delay_ms: float = 0.0
    #: The delay varies uniformly within ± this, in milliseconds.
    jitter_ms: float = 0.0
    #: Bandwidth limit in bits per second; None: no limit.
    rate_bps: Optional[int] = None

    @classmethod
    def from_json(cls, obj: Any) -> "LinkRule":
        if not isinstance(obj, dict):
            raise ProtocolError("supervisor sent an invalid reply: link rule is {!r}".format(obj))
        what = "link rule"
        return cls(
            down=_get(obj, "down", bool, what, False),
            loss=_get(obj, "loss", float, what, 0.0),
            delay_ms=_get(obj, "delay", float, what, 0.0),
            jitter_ms=_get(obj, "jitter", float, what, 0.0),
            rate_bps=_get(obj, "rate_bps", int, what, None),
        )

    @property
    def is_noop(self) -> bool:
        return self == LinkRule()


@dataclass(frozen=True)
class FaultEvent:
    """One change to the faults, as the switch's history keeps it."""

    #: Seconds since the Unix epoch.
    at: float
    #: What changed, e.g. ``partition [a,b] [c]`` or ``link a-b delay=50ms``.
    change: str

    def __str__(self) -> str:
        return self.change


@dataclass(frozen=True)
class SavedLink:
    a: str
    b: str
    rule: LinkRule


@dataclass(frozen=True)
class FaultState:
    """The faults in force, as a cluster snapshot saves them."""

    blocked: List[str] = field(default_factory=list)
    partition: List[List[str]] = field(default_factory=list)
    links: List[SavedLink] = field(default_factory=list)

    @classmethod
    def from_json(cls, obj: Any) -> "FaultState":
        if not isinstance(obj, dict):
            raise ProtocolError("supervisor sent an invalid reply: faults are {!r}".format(obj))
        links = []
        for link in _get(obj, "links", list, "faults", []):
            if not isinstance(link, dict):
                raise ProtocolError("supervisor sent an invalid reply: link is {!r}".format(link))
            links.append(
                SavedLink(
                    a=_get(link, "a", str, "link"),
                    b=_get(link, "b", str, "link"),
                    rule=LinkRule.from_json(link.get("rule")),
                )
            )
        return cls(
            blocked=list(_get(obj, "blocked", list, "faults", [])),
            partition=[list(g) for g in _get(obj, "partition", list, "faults", [])],
            links=links,
        )


@dataclass(frozen=True)
class SavedNode:
    name: str
    role: str
    #: Whether its machine ran (and so was saved).
    running: bool
    #: The size of its saved machine.
    bytes: int


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot of a whole cluster: the reply to a save or a restore."""

    name: str
    cluster: str
    composition: str
    backend: str
    created_unix: int
    #: How long the save (or, in a restore's reply, the restore) took.
    took_ms: int
    nodes: List[SavedNode]
    faults: FaultState
    path: str = ""

    @classmethod
    def from_json(cls, obj: Json) -> "SnapshotInfo":
        what = "snapshot"
        nodes = []
        for n in _get(obj, "nodes", list, what):
            if not isinstance(n, dict):
                raise ProtocolError("supervisor sent an invalid reply: saved node is {!r}".format(n))
            nodes.append(
                SavedNode(
                    name=_get(n, "name", str, "saved node"),
                    role=_get(n, "role", str, "saved node"),
                    running=_get(n, "running", bool, "saved node"),
                    bytes=_get(n, "bytes", int, "saved node"),
                )
            )
        return cls(
            name=_get(obj, "name", str, what),
            cluster=_get(obj, "cluster", str, what),
            composition=_get(obj, "composition", str, what),
            backend=_get(obj, "backend", str, what),
            created_unix=_get(obj, "created_unix", int, what),
            took_ms=_get(obj, "took_ms", int, what),
            nodes=nodes,
            faults=FaultState.from_json(obj.get("faults", {})),
            path=_get(obj, "path", str, what, ""),
        )

    @property
    def bytes(self) -> int:
        """The bytes its nodes' saved machines take."""
        return sum(n.bytes for n in self.nodes)


@dataclass(frozen=True)
class Exited:
    """What a command printed and how it ended (``exec``'s result)."""

    status: ExitStatus
    stdout: bytes
    stderr: bytes


def error_of(reply: Json) -> SupervisorError:
    """The exception for an ``error`` reply."""
    message = reply.get("message")
    if not isinstance(message, str):
        message = "the supervisor answered an error without a message: {}".format(reply)
    node = reply.get("node") if isinstance(reply.get("node"), str) else None
    if reply.get("unsupported") is True:
        return Unsupported(message, node, True)
    return SupervisorError(message, node, False)


class _Connection:
    """One connection to the supervisor: JSON lines out, JSON lines in,
    every read bounded by ``timeout``."""

    def __init__(self, path: str, request: str, timeout: float) -> None:
        self.path = path
        self.request = request
        self.timeout = timeout
        self.buffer = b""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            self.sock.close()
            raise NotRunning(path) from None
        except socket.timeout:
            self.sock.close()
            raise SupervisorTimeout(request, timeout, path) from None
        except OSError as e:
            self.sock.close()
            raise TestbedError("cannot connect to the supervisor at {}: {}".format(path, e)) from None

    def __enter__(self) -> "_Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, message: Json) -> None:
        line = json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"
        try:
            self.sock.sendall(line)
        except socket.timeout:
            raise SupervisorTimeout(self.request, self.timeout, self.path) from None
        except OSError as e:
            raise ProtocolError("supervisor connection {}: {}".format(self.path, e)) from None

    def _fill(self) -> bytes:
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise SupervisorTimeout(self.request, self.timeout, self.path) from None
        except OSError as e:
            raise ProtocolError("supervisor connection {}: {}".format(self.path, e)) from None
        return chunk

    def recv(self) -> Json:
        """The next reply line, as a JSON object with a ``type``."""
        while b"\n" not in self.buffer:
            chunk = self._fill()
            if not chunk:
                raise ProtocolError(
                    "the supervisor closed the connection during the {} request".format(
                        self.request
                    )
                )
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        try:
            reply = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ProtocolError(
                "supervisor sent an invalid reply: {} in {!r}".format(e, line[:200])
            ) from None
        if not isinstance(reply, dict) or not isinstance(reply.get("type"), str):
            raise ProtocolError(
                "supervisor sent an invalid reply: no type in {!r}".format(line[:200])
            )
        return reply


def _unexpected(request: str, reply: Json) -> ProtocolError:
    return ProtocolError(
        "unexpected reply from the supervisor to {}: {}".format(
            request, json.dumps(reply)[:300]
        )
    )


#: A command: a string runs with ``sh -c``, a sequence of strings is an
#: argv run directly.
Command = Union[str, Sequence[str]]


def command_json(command: Command) -> Json:
    if isinstance(command, str):
        return {"shell": command}
    argv = list(command)
    if not argv or not all(isinstance(a, str) for a in argv):
        raise TypeError("an argv command is a non-empty sequence of strings")
    return {"argv": argv}


class ApiClient:
    """A client of one supervisor, at the API socket ``socket``.

    Every method opens its own connection, sends one request, reads its
    replies and closes. ``timeout`` arguments are in seconds and bound each
    read of the reply; ``error`` replies raise
    :class:`~testbed.errors.SupervisorError` (or
    :class:`~testbed.errors.Unsupported`).
    """

    def __init__(self, socket: Union[str, "os.PathLike[str]"]) -> None:
        self.socket = os.fspath(socket)

    def __repr__(self) -> str:
        return "ApiClient({!r})".format(self.socket)

    def connect(self, request: str, timeout: float) -> _Connection:
        return _Connection(self.socket, request, timeout)

    def call(self, request: Json, timeout: float) -> Json:
        """Sends ``request`` and returns its one reply; an ``error`` reply
        raises."""
        op = str(request.get("op"))
        log.debug("request %s", op)
        with self.connect(op, timeout) as conn:
            conn.send(request)
            reply = conn.recv()
        if reply["type"] == "error":
            raise error_of(reply)
        return reply

    def status(self, timeout: float) -> ClusterStatus:
        reply = self.call({"op": "status"}, timeout)
        if reply["type"] != "status":
            raise _unexpected("status", reply)
        return ClusterStatus.from_json(reply)

    def watch(
        self,
        timeout: float,
        on_node: Optional[Callable[[NodeStatus], None]] = None,
    ) -> ClusterStatus:
        """Calls ``on_node`` with each node's state as it changes, until
        every node is ready, failed or stopped; returns the status then.
        ``timeout`` bounds the wait for each change."""
        with self.connect("watch", timeout) as conn:
            conn.send({"op": "watch"})
            while True:
                reply = conn.recv()
                kind = reply["type"]
                if kind == "node":
                    if on_node is not None:
                        on_node(NodeStatus.from_json(reply))
                elif kind == "settled":
                    return ClusterStatus.from_json(reply)
                elif kind == "error":
                    raise error_of(reply)
                else:
                    raise _unexpected("watch", reply)

    def exec(
        self,
        node: str,
        command: Command,
        timeout: float,
        command_timeout: Optional[float] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: Optional[bytes] = None,
        on_output: Optional[Callable[[str, bytes], None]] = None,
    ) -> Exited:
        """Runs ``command`` on ``node`` to completion. ``command_timeout``
        is the command's own limit (the agent kills it then and reports
        ``timed_out``); ``timeout`` bounds each read of its output.
        ``on_output(stream, data)`` sees the output as it comes."""
        exec_json: Json = {"command": command_json(command)}
        if env:
            exec_json["env"] = dict(env)
        if cwd is not None:
            exec_json["cwd"] = cwd
        if command_timeout is not None:
            exec_json["timeout_ms"] = max(0, int(round(command_timeout * 1000)))
        exec_json["stdin"] = stdin is not None
        stdout, stderr = bytearray(), bytearray()
        with self.connect("exec", timeout) as conn:
            conn.send({"op": "exec", "node": node, "exec": exec_json})
            feeder = None
            if stdin is not None:
                # Written from another thread while this one reads, so that
                # a command that prints a lot before reading all its input
                # cannot block both sides.
                feeder = threading.Thread(
                    target=_feed, args=(conn, stdin), name="testbed-stdin", daemon=True
                )
                feeder.start()
            while True:
                reply = conn.recv()
                kind = reply["type"]
                if kind in ("stdout", "stderr"):
                    data = b64decode(reply.get("data"), kind)
                    (stdout if kind == "stdout" else stderr).extend(data)
                    if on_output is not None:
                        on_output(kind, data)
                elif kind == "exited":
                    status = ExitStatus.from_json(reply.get("status"))
                    break
                elif kind == "error":
                    raise error_of(reply)
                else:
                    raise _unexpected("exec", reply)
            if feeder is not None:
                feeder.join(timeout=1.0)
        return Exited(status, bytes(stdout), bytes(stderr))

    def put(
        self,
        node: str,
        path: str,
        data: bytes,
        mode: int,
        timeout: float,
        owner: Optional[str] = None,
    ) -> None:
        request: Json = {"op": "put", "node": node, "path": path, "mode": mode}
        if owner is not None:
            request["owner"] = owner
        request["data"] = b64encode(data)
        reply = self.call(request, timeout)
        if reply["type"] != "ok":
            raise _unexpected("put", reply)

    def get(self, node: str, path: str, timeout: float) -> Tuple[int, bytes]:
        """The mode and contents of a file in the node."""
        reply = self.call({"op": "get", "node": node, "path": path}, timeout)
        if reply["type"] != "file":
            raise _unexpected("get", reply)
        mode = _get(reply, "mode", int, "file")
        return mode, b64decode(reply.get("data"), "file data")

    def forward(self, node: str, port: int, timeout: float) -> socket.socket:
        """A connection to TCP ``port`` inside ``node``, through its agent:
        the returned socket carries the TCP stream's bytes (blocking, no
        timeout); close it when done."""
        conn = self.connect("forward", timeout)
        try:
            conn.send({"op": "forward", "node": node, "port": port})
            # The reply line is read a byte at a time: what follows it is
            # the guest's stream, which must stay in the socket.
            line = b""
            while not line.endswith(b"\n"):
                try:
                    byte = conn.sock.recv(1)
                except socket.timeout:
                    raise SupervisorTimeout("forward", timeout, self.socket) from None
                if not byte:
                    raise ProtocolError(
                        "the supervisor closed the connection during the forward request"
                    )
                line += byte
            conn.buffer = line
            reply = conn.recv()
            if reply["type"] == "error":
                raise error_of(reply)
            if reply["type"] != "ok":
                raise _unexpected("forward", reply)
        except BaseException:
            conn.close()
            raise
        conn.sock.settimeout(None)
        return conn.sock

    def power(self, node: str, action: str, timeout: float) -> None:
        if action not in POWER_ACTIONS:
            raise ValueError(
                "unknown power action {!r} (one of {})".format(action, ", ".join(POWER_ACTIONS))
            )
        reply = self.call({"op": "power", "node": node, "action": action}, timeout)
        if reply["type"] != "ok":
            raise _unexpected("power", reply)

    def wait(self, node: str, what: Json, wait_timeout: float, timeout: float) -> None:
        """Waits inside the node for ``what`` (``{"for": "unit", "unit":
        U}``, ``{"for": "port", "port": P}``, ``{"for": "file", "path":
        F}``) for at most ``wait_timeout`` seconds."""
        request: Json = {"op": "wait", "node": node}
        request.update(what)
        request["timeout_ms"] = max(0, int(round(wait_timeout * 1000)))
        reply = self.call(request, timeout)
        if reply["type"] != "ok":
            raise _unexpected("wait", reply)

    def fault(self, fault: Json, timeout: float) -> Optional[LinkRule]:
        """Applies a fault (``{"fault": "block", "node": N}``, ``unblock``,
        ``partition`` with ``groups``, ``heal``, ``link`` with ``a``, ``b``
        and the fields to change); a link change returns the link's new
        rule."""
        request: Json = {"op": "fault"}
        request.update(fault)
        reply = self.call(request, timeout)
        if reply["type"] == "ok":
            return None
        if reply["type"] == "link":
            return LinkRule.from_json(reply.get("rule"))
        raise _unexpected("fault", reply)

    def history(self, timeout: float) -> List[FaultEvent]:
        reply = self.call({"op": "history"}, timeout)
        if reply["type"] != "history":
            raise _unexpected("history", reply)
        events = []
        for e in _get(reply, "events", list, "history"):
            if not isinstance(e, dict):
                raise ProtocolError("supervisor sent an invalid reply: event is {!r}".format(e))
            events.append(
                FaultEvent(at=_get(e, "at", float, "event"), change=_get(e, "change", str, "event"))
            )
        return events

    def snapshot(self, name: str, timeout: float) -> SnapshotInfo:
        reply = self.call({"op": "snapshot", "name": name}, timeout)
        if reply["type"] != "snapshot":
            raise _unexpected("snapshot", reply)
        return SnapshotInfo.from_json(reply)

    def restore(self, name: str, timeout: float) -> SnapshotInfo:
        reply = self.call({"op": "restore", "name": name}, timeout)
        if reply["type"] != "snapshot":
            raise _unexpected("restore", reply)
        return SnapshotInfo.from_json(reply)

    def down(self, timeout: float) -> None:
        """Stops every node and the supervisor (the state directory is
        removed before the reply)."""
        reply = self.call({"op": "down"}, timeout)
        if reply["type"] != "ok":
            raise _unexpected("down", reply)


def _feed(conn: _Connection, data: bytes) -> None:
    try:
        for start in range(0, len(data), 65536):
            conn.send({"input": "stdin", "data": b64encode(data[start : start + 65536])})
        conn.send({"input": "eof"})
    except Exception as e:  # the reader reports the connection's fate
        log.debug("stdin for exec not sent whole: %s", e)
