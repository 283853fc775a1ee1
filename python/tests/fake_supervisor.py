"""A fake cluster supervisor: serves the JSON-lines API of
``crates/api/src/lib.rs`` on a unix socket, with nodes that exist only in
memory. Commands run on this host (``sh -c``), unless a canned answer is
set for them; files, units, ports, power, faults and snapshots are tables
the tests set and read.

It runs in a thread of the test (:class:`FakeSupervisor`), or as a process
(``python fake_supervisor.py --state-dir DIR ...``), which is how the fake
``testbed`` command (``fake_testbed.py``) brings a cluster "up": it serves
until a ``down`` request, then removes its state directory, as the real one
does.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

Json = Dict[str, Any]

#: A canned answer to a command: stdout, stderr, exit code.
Canned = Tuple[bytes, bytes, int]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class FakeSupervisor:
    """A supervisor for the nodes ``nodes`` (``[(name, role), ...]``) whose
    state directory is ``state_dir``.

    ``mode`` changes how it answers every request: ``normal``; ``silent``
    (reads the request, never answers); ``garbage`` (a line that is not
    JSON); ``hangup`` (closes the connection at once); ``wrong`` (a reply of
    another type).
    """

    def __init__(
        self,
        state_dir: Path,
        nodes: List[Tuple[str, str]],
        cluster: str = "fake",
        composition: str = "/nonexistent/testbed.toml",
        accel: str = "tcg",
        backend: str = "qemu",
        boot_timeout_ms: int = 900_000,
        activation_timeout_ms: int = 300_000,
        services: Optional[Dict[str, List[str]]] = None,
        boot_delay: float = 0.3,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.socket_path = self.state_dir / "api.sock"
        self.cluster = cluster
        self.composition = composition
        self.accel = accel
        self.backend = backend
        self.order = [n for n, _ in nodes]
        self.roles = dict(nodes)
        self.states: Dict[str, str] = {n: "ready" for n, _ in nodes}
        self.messages: Dict[str, Optional[str]] = {n: None for n, _ in nodes}
        self.services = services if services is not None else {n: [] for n, _ in nodes}
        self.boot_timeout_ms = boot_timeout_ms
        self.activation_timeout_ms = activation_timeout_ms
        self.boot_delay = boot_delay
        self.mode = "normal"
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        #: Every request received, in order.
        self.requests: List[Json] = []
        #: Canned answers by command text (shell text, or argv joined by spaces).
        self.canned: Dict[str, Canned] = {}
        #: Files in the nodes: (node, path) -> (mode, data).
        self.files: Dict[Tuple[str, str], Tuple[int, bytes]] = {}
        #: Units: (node, unit) -> "active", "failed" or "inactive".
        self.units: Dict[Tuple[str, str], str] = {}
        #: Open TCP ports: (node, port).
        self.ports: Set[Tuple[str, int]] = set()
        #: Power actions the backend cannot do.
        self.unsupported: Set[str] = set()
        #: A power action the supervisor fails with this message.
        self.power_failures: Dict[str, str] = {}
        #: What a node that is started comes up as ("ready" or "failed").
        self.start_outcome: Dict[str, str] = {}
        self.blocked: Set[str] = set()
        self.partition: List[List[str]] = []
        self.links: Dict[Tuple[str, str], Json] = {}
        self.history: List[Json] = []
        self.snapshots: Dict[str, Json] = {}
        self.stopped = threading.Event()
        self._server: Optional[socket.socket] = None
        self._socket_ino: Optional[int] = None
        self._threads: List[threading.Thread] = []

    # -- life ------------------------------------------------------------

    def start(self) -> "FakeSupervisor":
        (self.state_dir / "nodes").mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        for name in self.order:
            d = self.state_dir / "nodes" / name
            d.mkdir(parents=True, exist_ok=True)
            (d / "console.log").write_text(
                "".join("[{:6.2f}] {} boot line {}\n".format(i * 0.1, name, i) for i in range(60))
            )
        spec = {
            "cluster": self.cluster,
            "composition": self.composition,
            "accel": self.accel,
            "boot_timeout_ms": self.boot_timeout_ms,
            "activation_timeout_ms": self.activation_timeout_ms,
            "secret": "the fake spec holds no real secret",
            "nodes": [
                {"name": n, "role": self.roles[n], "activation": {"services": self.services.get(n, [])}}
                for n in self.order
            ],
        }
        (self.state_dir / "spec.json").write_text(json.dumps(spec))
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.socket_path))
        self._socket_ino = self.socket_path.stat().st_ino
        server.listen(64)
        server.settimeout(0.1)
        self._server = server
        t = threading.Thread(target=self._accept, name="fake-supervisor", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        self.stopped.set()
        if self._server is not None:
            self._server.close()
            self._server = None
        for t in self._threads:
            t.join(timeout=2)
        # Only our own socket: after a ``down`` (which removed the state
        # folder) the next ``up`` of the same cluster may already have
        # bound its socket at the same path.
        try:
            if self.socket_path.stat().st_ino == self._socket_ino:
                self.socket_path.unlink()
        except FileNotFoundError:
            pass

    def _accept(self) -> None:
        while not self.stopped.is_set():
            server = self._server
            if server is None:
                return
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    # -- helpers ---------------------------------------------------------

    def node_status(self, name: str) -> Json:
        out: Json = {
            "name": name,
            "role": self.roles[name],
            "state": self.states[name],
            "addresses": ["10.9.0.{}/24 (lan)".format(11 + self.order.index(name))],
        }
        if self.states[name] not in ("stopped",):
            out["pid"] = 1000 + self.order.index(name)
            out["uptime_ms"] = 12_345
        if self.messages[name]:
            out["message"] = self.messages[name]
        out["console_log"] = str(self.state_dir / "nodes" / name / "console.log")
        return out

    def status(self) -> Json:
        return {
            "cluster": self.cluster,
            "composition": self.composition,
            "state_dir": str(self.state_dir),
            "backend": self.backend,
            "accel": self.accel,
            "supervisor_pid": os.getpid(),
            "console": self.backend == "qemu",
            "nodes": [self.node_status(n) for n in self.order],
        }

    def set_state(self, name: str, state: str, message: Optional[str] = None) -> None:
        with self.changed:
            self.states[name] = state
            self.messages[name] = message
            self.changed.notify_all()

    def _record(self, change: str) -> None:
        self.history.append({"at": time.time(), "change": change})

    @staticmethod
    def error(message: str, node: Optional[str] = None, unsupported: bool = False) -> Json:
        reply: Json = {"type": "error", "message": message}
        if node is not None:
            reply["node"] = node
        if unsupported:
            reply["unsupported"] = True
        return reply

    def _known(self, name: Any) -> Optional[Json]:
        if name not in self.roles:
            return self.error("no node {} in cluster {}".format(name, self.cluster), name)
        return None

    def _agent(self, name: str) -> Optional[Json]:
        refusal = self._known(name)
        if refusal:
            return refusal
        state = self.states[name]
        if state not in ("ready", "activating", "failed"):
            return self.error("node {}: its agent is not connected (node is {})".format(name, state), name)
        return None

    def _boot(self, name: str) -> None:
        self.set_state(name, "booting")
        outcome = self.start_outcome.get(name, "ready")

        def later() -> None:
            time.sleep(self.boot_delay)
            if outcome == "failed":
                self.set_state(name, "failed", "unit etcd.service failed: the fake said so")
            else:
                self.set_state(name, outcome)

        threading.Thread(target=later, daemon=True).start()

    # -- serving ---------------------------------------------------------

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        try:
            while True:
                line = reader.readline()
                if not line:
                    return
                try:
                    request = json.loads(line)
                except ValueError:
                    self._send(conn, self.error("malformed request"))
                    return
                with self.lock:
                    self.requests.append(request)
                mode = self.mode
                if mode == "silent":
                    self.stopped.wait(60)
                    return
                if mode == "hangup":
                    return
                if mode == "garbage":
                    conn.sendall(b"this is not json\n")
                    return
                if mode == "wrong":
                    self._send(conn, {"type": "history", "events": []} if request.get("op") != "history" else {"type": "ok"})
                    return
                if not self._handle(conn, reader, request):
                    return
        except (BrokenPipeError, ConnectionResetError):
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass

    @staticmethod
    def _send(conn: socket.socket, reply: Json) -> None:
        conn.sendall(json.dumps(reply).encode() + b"\n")

    def _handle(self, conn: socket.socket, reader: Any, req: Json) -> bool:
        op = req.get("op")
        send = lambda reply: self._send(conn, reply)  # noqa: E731
        if op == "status":
            with self.lock:
                send(dict(type="status", **self.status()))
        elif op == "watch":
            sent: Dict[str, str] = {}
            while True:
                with self.changed:
                    changes = [n for n in self.order if sent.get(n) != self.states[n]]
                    for n in changes:
                        sent[n] = self.states[n]
                    statuses = [self.node_status(n) for n in changes]
                    settled = all(s in ("ready", "failed", "stopped") for s in self.states.values())
                    status = self.status()
                for s in statuses:
                    send(dict(type="node", **s))
                if settled:
                    send(dict(type="settled", **status))
                    break
                with self.changed:
                    self.changed.wait(0.05)
        elif op == "exec":
            self._exec(conn, reader, req)
        elif op == "put":
            refusal = self._agent(req.get("node"))
            if refusal:
                send(refusal)
            else:
                data = base64.b64decode(req["data"])
                self.files[(req["node"], req["path"])] = (req["mode"], data)
                send({"type": "ok"})
        elif op == "get":
            refusal = self._agent(req.get("node"))
            if refusal:
                send(refusal)
            elif (req["node"], req["path"]) not in self.files:
                send(self.error("node {}: cannot read {}: no such file".format(req["node"], req["path"]), req["node"]))
            else:
                mode, data = self.files[(req["node"], req["path"])]
                send({"type": "file", "mode": mode, "data": b64(data)})
        elif op == "forward":
            refusal = self._agent(req.get("node"))
            if refusal:
                send(refusal)
                return True
            if (req["node"], req["port"]) not in self.ports:
                send(self.error("node {}: connection refused on port {}".format(req["node"], req["port"]), req["node"]))
                return True
            # The reply and the first bytes of the stream in one write, as
            # a fast guest would: the client must not lose them.
            conn.sendall(b'{"type":"ok"}\nhello from ' + req["node"].encode() + b"\n")
            while True:
                data = reader.read1(65536) if hasattr(reader, "read1") else reader.read(1)
                if not data:
                    return False
                conn.sendall(data.upper())
        elif op == "power":
            send(self._power(req.get("node"), req.get("action")))
        elif op == "wait":
            send(self._wait(req))
        elif op == "fault":
            send(self._fault(req))
        elif op == "history":
            send({"type": "history", "events": list(self.history)})
        elif op in ("snapshot", "restore"):
            send(self._snapshot(op, req.get("name")))
        elif op == "down":
            # As the real one: everything is removed before the reply.
            self.stopped.set()
            shutil.rmtree(self.state_dir, ignore_errors=True)
            send({"type": "ok"})
            return False
        else:
            send(self.error("unknown request {!r}".format(op)))
        return True

    def _exec(self, conn: socket.socket, reader: Any, req: Json) -> None:
        node = req.get("node")
        refusal = self._agent(node)
        if refusal:
            self._send(conn, refusal)
            return
        spec = req["exec"]
        command = spec["command"]
        text = command["shell"] if "shell" in command else " ".join(command["argv"])
        stdin = b""
        if spec.get("stdin"):
            while True:
                line = json.loads(reader.readline())
                if line["input"] == "eof":
                    break
                stdin += base64.b64decode(line["data"])
        canned = self.canned.get(text)
        if canned is not None:
            out, err, code = canned
            status: Json = {"code": code, "signal": None, "timed_out": False}
        else:
            argv = ["sh", "-c", command["shell"]] if "shell" in command else list(command["argv"])
            env = dict(os.environ)
            env.update(spec.get("env") or {})
            env["FAKE_NODE"] = node
            timeout = spec.get("timeout_ms")
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=spec.get("cwd"),
                start_new_session=True,
            )
            try:
                out, err = proc.communicate(stdin, timeout=None if timeout is None else timeout / 1000)
                timed_out = False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
                timed_out = True
            rc = proc.returncode
            status = {
                "code": rc if rc >= 0 and not timed_out else None,
                "signal": -rc if rc < 0 else None,
                "timed_out": timed_out,
            }
        # Output in several pieces, as the agent streams it.
        for start in range(0, len(out), 7):
            self._send(conn, {"type": "stdout", "data": b64(out[start : start + 7])})
        if err:
            self._send(conn, {"type": "stderr", "data": b64(err)})
        self._send(conn, {"type": "exited", "status": status})

    def _power(self, node: Any, action: Any) -> Json:
        refusal = self._known(node)
        if refusal:
            return refusal
        if action in self.unsupported:
            return self.error("the {} backend cannot {} a node".format(self.backend, action), node, True)
        if action in self.power_failures:
            return self.error(self.power_failures[action], node)
        state = self.states[node]
        if action == "start":
            if state in ("stopped", "failed"):
                self._boot(node)
        elif action in ("shutdown", "crash"):
            self.set_state(node, "stopped", "crashed" if action == "crash" else "shut down")
        elif action == "reboot":
            self._boot(node)
        elif action == "pause":
            self.set_state(node, "paused")
        elif action == "resume":
            self.set_state(node, "ready")
        else:
            return self.error("unknown power action {!r}".format(action))
        return {"type": "ok"}

    def _wait(self, req: Json) -> Json:
        node = req.get("node")
        refusal = self._agent(node)
        if refusal:
            return refusal
        deadline = time.monotonic() + req["timeout_ms"] / 1000
        kind = req.get("for")
        while True:
            if kind == "unit":
                state = self.units.get((node, req["unit"]), "inactive")
                if state == "active":
                    return {"type": "ok"}
                if state == "failed":
                    return self.error(
                        "node {}: unit {} failed:\n-- journal --\nfake: {} exited with status 1".format(
                            node, req["unit"], req["unit"]
                        ),
                        node,
                    )
                what = "unit {}".format(req["unit"])
            elif kind == "port":
                if (node, req["port"]) in self.ports:
                    return {"type": "ok"}
                what = "port {}".format(req["port"])
            elif kind == "file":
                if (node, req["path"]) in self.files:
                    return {"type": "ok"}
                what = "file {}".format(req["path"])
            else:
                return self.error("unknown wait {!r}".format(kind))
            if time.monotonic() >= deadline:
                return self.error("node {}: {} not there within {}ms".format(node, what, req["timeout_ms"]), node)
            time.sleep(0.02)

    def _fault(self, req: Json) -> Json:
        kind = req.get("fault")
        if kind in ("block", "unblock"):
            refusal = self._known(req.get("node"))
            if refusal:
                return self.error("unknown node {}".format(req.get("node")))
            (self.blocked.add if kind == "block" else self.blocked.discard)(req["node"])
            self._record("{} {}".format(kind, req["node"]))
            return {"type": "ok"}
        if kind == "partition":
            seen: Set[str] = set()
            for group in req["groups"]:
                for n in group:
                    if n not in self.roles:
                        return self.error("unknown node {}".format(n))
                    if n in seen:
                        return self.error("node {} is in two groups of the partition".format(n))
                    seen.add(n)
            self.partition = req["groups"]
            self._record("partition " + " ".join("[{}]".format(",".join(g)) for g in req["groups"]))
            return {"type": "ok"}
        if kind == "heal":
            self.blocked.clear()
            self.partition = []
            self.links.clear()
            self._record("heal")
            return {"type": "ok"}
        if kind == "link":
            a, b = req.get("a"), req.get("b")
            for n in (a, b):
                if n not in self.roles:
                    return self.error("unknown node {}".format(n))
            key = (min(a, b), max(a, b))
            rule = {"down": False, "loss": 0.0, "delay": 0.0, "jitter": 0.0, "rate_bps": None}
            if not req.get("clear"):
                rule.update(self.links.get(key, {}))
            for field, name in (("down", "down"), ("loss", "loss"), ("delay_ms", "delay"), ("jitter_ms", "jitter")):
                if field in req:
                    rule[name] = req[field]
            if "delay_ms" in req and "jitter_ms" not in req and rule["jitter"] > rule["delay"]:
                rule["jitter"] = 0.0
            if "rate_bps" in req:
                rule["rate_bps"] = req["rate_bps"] or None
            if not 0.0 <= rule["loss"] <= 1.0:
                return self.error("invalid rule for link {}-{}: loss is a fraction between 0.0 and 1.0".format(a, b))
            if rule == {"down": False, "loss": 0.0, "delay": 0.0, "jitter": 0.0, "rate_bps": None}:
                self.links.pop(key, None)
                self._record("link {}-{} clear".format(a, b))
            else:
                self.links[key] = rule
                self._record("link {}-{} {}".format(a, b, json.dumps(rule, sort_keys=True)))
            return {"type": "link", "rule": rule}
        return self.error("unknown fault {!r}".format(kind))

    def _snapshot(self, op: str, name: Any) -> Json:
        if op == "restore" and name not in self.snapshots:
            return self.error("no snapshot {} of cluster {}".format(name, self.cluster))
        if self.backend != "qemu":
            return self.error("the {} backend cannot save clusters".format(self.backend), None, True)
        info = {
            "name": name,
            "cluster": self.cluster,
            "composition": self.composition,
            "backend": self.backend,
            "created_unix": 1_700_000_000,
            "took_ms": 1234 if op == "snapshot" else 567,
            "nodes": [
                {"name": n, "role": self.roles[n], "running": self.states[n] != "stopped", "bytes": 1 << 20}
                for n in self.order
            ],
            "faults": {
                "blocked": sorted(self.blocked),
                "partition": self.partition,
                "links": [{"a": a, "b": b, "rule": r} for (a, b), r in sorted(self.links.items())],
            },
            "path": str(self.state_dir / "snapshots" / str(name)),
        }
        if op == "snapshot":
            self.snapshots[name] = info
        return dict(type="snapshot", **info)


def main(argv: Optional[List[str]] = None) -> int:
    """Serves until a ``down`` request (the fake ``testbed up``'s
    supervisor)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--composition", required=True)
    parser.add_argument("--nodes", required=True, help="NAME:ROLE,...")
    parser.add_argument("--accel", default="kvm")
    parser.add_argument("--units", default="", help="NODE:UNIT=STATE,...")
    args = parser.parse_args(argv)
    nodes = [tuple(item.split(":", 1)) for item in args.nodes.split(",")]
    fake = FakeSupervisor(
        Path(args.state_dir),
        nodes,  # type: ignore[arg-type]
        cluster=args.cluster,
        composition=args.composition,
        accel=args.accel,
    )
    for item in filter(None, args.units.split(",")):
        where, state = item.split("=")
        node, unit = where.split(":")
        fake.units[(node, unit)] = state
    fake.start()
    fake.stopped.wait()
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
