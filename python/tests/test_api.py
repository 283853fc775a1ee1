"""The low-level client (:class:`testbed.ApiClient`) against the fake
supervisor: every request and reply type of the API, error replies, a
supervisor that breaks the protocol, and one that never answers."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from fake_supervisor import FakeSupervisor
from testbed import (
    ApiClient,
    ExitStatus,
    LinkRule,
    NotRunning,
    ProtocolError,
    SupervisorError,
    SupervisorTimeout,
    Unsupported,
)


@pytest.fixture
def api(fake: FakeSupervisor) -> ApiClient:
    return ApiClient(fake.socket_path)


def test_status_describes_the_cluster_and_every_node(api: ApiClient, fake: FakeSupervisor) -> None:
    fake.set_state("compute2", "failed", "unit slurmd.service failed")
    status = api.status(5)
    assert (status.cluster, status.backend, status.accel) == ("fake", "qemu", "tcg")
    assert status.state_dir == str(fake.state_dir)
    assert status.console is True
    assert [(n.name, n.role, n.state) for n in status.nodes] == [
        ("ctl", "ctl", "ready"),
        ("compute1", "compute", "ready"),
        ("compute2", "compute", "failed"),
    ]
    ctl = status.node("ctl")
    assert ctl is not None
    assert ctl.addresses == ["10.9.0.11/24 (lan)"]
    assert ctl.pid == 1000 and ctl.uptime_ms == 12345
    assert ctl.console_log == str(fake.state_dir / "nodes" / "ctl" / "console.log")
    failed = status.node("compute2")
    assert failed is not None and failed.message == "unit slurmd.service failed"
    assert status.node("nope") is None
    assert fake.requests[-1] == {"op": "status"}


def test_watch_streams_node_changes_until_every_node_settles(api: ApiClient, fake: FakeSupervisor) -> None:
    fake.set_state("compute1", "booting")
    seen = []

    def settle() -> None:
        time.sleep(0.2)
        fake.set_state("compute1", "activating")
        time.sleep(0.2)
        fake.set_state("compute1", "ready")

    threading.Thread(target=settle).start()
    status = api.watch(5, on_node=lambda n: seen.append((n.name, n.state)))
    assert seen[:3] == [("ctl", "ready"), ("compute1", "booting"), ("compute2", "ready")]
    assert seen[3:] == [("compute1", "activating"), ("compute1", "ready")]
    assert [n.state for n in status.nodes] == ["ready"] * 3


def test_exec_collects_stdout_in_pieces_stderr_and_the_exit_status(api: ApiClient, fake: FakeSupervisor) -> None:
    out = api.exec("ctl", "printf 'a fairly long line of output\\n'; echo oops >&2; exit 3", timeout=10)
    assert out.stdout == b"a fairly long line of output\n"
    assert out.stderr == b"oops\n"
    assert out.status == ExitStatus(code=3, signal=None, timed_out=False)
    assert out.status.status == 3 and not out.status.success
    request = fake.requests[-1]
    assert request["op"] == "exec" and request["node"] == "ctl"
    assert request["exec"]["command"] == {"shell": "printf 'a fairly long line of output\\n'; echo oops >&2; exit 3"}
    assert request["exec"]["stdin"] is False and "timeout_ms" not in request["exec"]


def test_exec_takes_argv_env_cwd_stdin_and_a_command_timeout(api: ApiClient, fake: FakeSupervisor, tmp_path: Path) -> None:
    out = api.exec(
        "compute1",
        ["sh", "-c", 'echo "$GREETING from $FAKE_NODE in $(pwd)"; cat'],
        timeout=10,
        command_timeout=7.5,
        env={"GREETING": "hello"},
        cwd=str(tmp_path),
        stdin=b"line one\nline two\n" * 5000,
    )
    assert out.status.success
    first, rest = out.stdout.split(b"\n", 1)
    assert first == "hello from compute1 in {}".format(tmp_path).encode()
    assert rest == b"line one\nline two\n" * 5000
    spec = fake.requests[-1]["exec"]
    assert spec["command"] == {"argv": ["sh", "-c", 'echo "$GREETING from $FAKE_NODE in $(pwd)"; cat']}
    assert spec["timeout_ms"] == 7500 and spec["env"] == {"GREETING": "hello"} and spec["stdin"] is True


def test_exec_reports_a_signal_and_a_timeout(api: ApiClient) -> None:
    killed = api.exec("ctl", "kill -9 $$", timeout=10)
    assert killed.status == ExitStatus(code=None, signal=9, timed_out=False)
    assert (killed.status.status, str(killed.status)) == (137, "killed by signal 9")
    slow = api.exec("ctl", "echo started; sleep 30", timeout=10, command_timeout=0.3)
    assert slow.status.timed_out and slow.status.status == 124
    assert str(slow.status) == "killed after its timeout"
    assert slow.stdout == b"started\n"


def test_put_and_get_carry_bytes_and_modes(api: ApiClient, fake: FakeSupervisor) -> None:
    data = bytes(range(256)) * 3
    api.put("ctl", "/etc/blob", data, 0o640, timeout=5, owner="root:root")
    assert fake.files[("ctl", "/etc/blob")] == (0o640, data)
    assert fake.requests[-1]["owner"] == "root:root"
    assert api.get("ctl", "/etc/blob", timeout=5) == (0o640, data)


def test_an_error_reply_names_the_node(api: ApiClient) -> None:
    with pytest.raises(SupervisorError) as e:
        api.get("ctl", "/missing", timeout=5)
    assert e.value.node == "ctl" and not e.value.unsupported
    assert str(e.value) == "node ctl: cannot read /missing: no such file"
    with pytest.raises(SupervisorError, match="no node nope in cluster fake") as e:
        api.exec("nope", "true", timeout=5)
    assert e.value.node == "nope"


def test_forward_hands_over_the_stream_with_bytes_sent_with_the_reply(api: ApiClient, fake: FakeSupervisor) -> None:
    fake.ports.add(("ctl", 8080))
    with api.forward("ctl", 8080, timeout=5) as conn:
        conn.settimeout(5)
        first = b""
        while not first.endswith(b"\n"):
            first += conn.recv(100)
        assert first == b"hello from ctl\n"
        conn.sendall(b"ping")
        assert conn.recv(100) == b"PING"
    with pytest.raises(SupervisorError, match="connection refused on port 9"):
        api.forward("ctl", 9, timeout=5)


def test_power_actions_and_an_unsupported_one(api: ApiClient, fake: FakeSupervisor) -> None:
    api.power("compute1", "crash", timeout=5)
    assert fake.states["compute1"] == "stopped"
    api.power("compute1", "start", timeout=5)
    assert fake.states["compute1"] == "booting"
    fake.unsupported.add("pause")
    with pytest.raises(Unsupported) as e:
        api.power("ctl", "pause", timeout=5)
    assert e.value.unsupported and e.value.node == "ctl"
    assert "cannot pause" in str(e.value)
    assert [r["action"] for r in fake.requests if r["op"] == "power"] == ["crash", "start", "pause"]
    with pytest.raises(ValueError, match="unknown power action 'explode'"):
        api.power("ctl", "explode", timeout=5)


def test_wait_for_a_unit_a_port_and_a_file(api: ApiClient, fake: FakeSupervisor) -> None:
    fake.units[("ctl", "munge")] = "active"
    fake.ports.add(("ctl", 6817))
    fake.files[("ctl", "/run/ready")] = (0o644, b"")
    api.wait("ctl", {"for": "unit", "unit": "munge"}, 2, timeout=5)
    api.wait("ctl", {"for": "port", "port": 6817}, 2, timeout=5)
    api.wait("ctl", {"for": "file", "path": "/run/ready"}, 2, timeout=5)
    assert fake.requests[-3] == {"op": "wait", "node": "ctl", "for": "unit", "unit": "munge", "timeout_ms": 2000}
    fake.units[("ctl", "slurmctld")] = "failed"
    with pytest.raises(SupervisorError, match="unit slurmctld failed") as e:
        api.wait("ctl", {"for": "unit", "unit": "slurmctld"}, 2, timeout=5)
    assert "journal" in str(e.value)
    with pytest.raises(SupervisorError, match="not there within 100ms"):
        api.wait("ctl", {"for": "file", "path": "/never"}, 0.1, timeout=5)


def test_faults_and_their_history(api: ApiClient, fake: FakeSupervisor) -> None:
    assert api.fault({"fault": "block", "node": "compute1"}, 5) is None
    assert api.fault({"fault": "unblock", "node": "compute1"}, 5) is None
    assert api.fault({"fault": "partition", "groups": [["ctl"], ["compute1"]]}, 5) is None
    assert fake.partition == [["ctl"], ["compute1"]]
    rule = api.fault({"fault": "link", "a": "ctl", "b": "compute2", "delay_ms": 50.0, "jitter_ms": 5.0}, 5)
    assert rule == LinkRule(down=False, loss=0.0, delay_ms=50.0, jitter_ms=5.0, rate_bps=None)
    rule = api.fault({"fault": "link", "a": "compute2", "b": "ctl", "loss": 0.1, "rate_bps": 10_000_000}, 5)
    assert rule == LinkRule(loss=0.1, delay_ms=50.0, jitter_ms=5.0, rate_bps=10_000_000)
    assert api.fault({"fault": "heal"}, 5) is None
    with pytest.raises(SupervisorError, match="unknown node nope"):
        api.fault({"fault": "block", "node": "nope"}, 5)
    events = api.history(5)
    assert [e.change for e in events][:3] == ["block compute1", "unblock compute1", "partition [ctl] [compute1]"]
    assert events[-1].change == "heal" and str(events[-1]) == "heal"
    assert all(isinstance(e.at, float) and e.at > 1e9 for e in events)


def test_snapshot_and_restore(api: ApiClient, fake: FakeSupervisor) -> None:
    fake.blocked.add("compute2")
    saved = api.snapshot("booted", timeout=5)
    assert (saved.name, saved.cluster, saved.backend, saved.took_ms) == ("booted", "fake", "qemu", 1234)
    assert [(n.name, n.running) for n in saved.nodes] == [("ctl", True), ("compute1", True), ("compute2", True)]
    assert saved.bytes == 3 << 20
    assert saved.faults.blocked == ["compute2"]
    restored = api.restore("booted", timeout=5)
    assert restored.took_ms == 567 and restored.name == "booted"
    with pytest.raises(SupervisorError, match="no snapshot other of cluster fake"):
        api.restore("other", timeout=5)


def test_down_stops_the_supervisor(api: ApiClient, fake: FakeSupervisor) -> None:
    api.down(timeout=5)
    assert not fake.state_dir.exists()
    with pytest.raises(NotRunning, match="is not running"):
        api.status(5)


def test_no_supervisor_is_not_running(tmp_path: Path) -> None:
    with pytest.raises(NotRunning) as e:
        ApiClient(tmp_path / "api.sock").status(5)
    assert str(e.value) == "the cluster is not running (no supervisor answers at {})".format(tmp_path / "api.sock")
    # A socket file nobody listens on any more.
    dead = tmp_path / "dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(dead))
    s.close()
    with pytest.raises(NotRunning):
        ApiClient(dead).history(5)


def test_a_supervisor_that_never_answers_times_out_clearly(api: ApiClient, fake: FakeSupervisor) -> None:
    fake.mode = "silent"
    start = time.monotonic()
    with pytest.raises(SupervisorTimeout) as e:
        api.status(0.3)
    assert 0.25 < time.monotonic() - start < 5
    assert isinstance(e.value, TimeoutError)
    assert str(e.value) == "the supervisor did not answer the status request within 300ms ({})".format(fake.socket_path)
    with pytest.raises(SupervisorTimeout, match="the exec request within 1.5s"):
        api.exec("ctl", "true", timeout=1.5)


def test_a_supervisor_that_breaks_the_protocol(api: ApiClient, fake: FakeSupervisor) -> None:
    fake.mode = "garbage"
    with pytest.raises(ProtocolError, match="supervisor sent an invalid reply: .* in b'this is not json'"):
        api.status(5)
    fake.mode = "hangup"
    with pytest.raises(ProtocolError, match="the supervisor closed the connection during the exec request"):
        api.exec("ctl", "true", timeout=5)
    fake.mode = "wrong"
    with pytest.raises(ProtocolError, match='unexpected reply from the supervisor to status: {"type": "history"'):
        api.status(5)
    with pytest.raises(ProtocolError, match="unexpected reply from the supervisor to history"):
        api.history(5)
