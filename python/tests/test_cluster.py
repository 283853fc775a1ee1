"""The high-level client (:class:`testbed.Cluster`, :class:`testbed.Node`)
against the fake supervisor: the NixOS driver's node methods, the timeout
factor, faults as context managers, snapshots, artifacts, and failures
that name the node, the command, the status and the output."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from fake_supervisor import FakeSupervisor
from testbed import (
    Cluster,
    CommandFailed,
    ConfigError,
    LinkRule,
    NodeNotReady,
    NotRunning,
    ProtocolError,
    SupervisorError,
    TestbedError,
    UnknownNode,
    Unsupported,
    WaitFailed,
    WaitTimeout,
)


def execs(fake: FakeSupervisor) -> list:
    return [r for r in fake.requests if r["op"] == "exec"]


# -- attaching ------------------------------------------------------------


def test_attach_reads_the_status_the_spec_and_the_factor(cluster: Cluster, fake: FakeSupervisor, composition: Path) -> None:
    assert (cluster.name, cluster.backend, cluster.accel) == ("fake", "qemu", "tcg")
    assert cluster.timeout_factor == 5.0
    assert cluster.composition == composition
    assert cluster.state_dir.path == fake.state_dir
    # boot + activation timeouts of the spec: 900 s + 300 s.
    assert cluster.boot_timeout == 1200.0
    assert cluster["compute1"].services == ["munge", "slurmd"]
    assert repr(cluster) == "<Cluster fake (3 nodes, qemu backend, tcg)>"
    # The folder of the composition works as well as the file.
    assert Cluster.attach(composition.parent).name == "fake"


def test_the_factor_comes_from_the_accelerator_or_the_variable(fake: FakeSupervisor, composition: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.accel = "kvm"
    assert Cluster.attach(composition).timeout_factor == 1.0
    fake.accel = "none"
    assert Cluster.attach(composition).timeout_factor == 1.0
    monkeypatch.setenv("TESTBED_TIMEOUT_FACTOR", "2.5")
    assert Cluster.attach(composition).timeout_factor == 2.5
    monkeypatch.setenv("TESTBED_TIMEOUT_FACTOR", "0")
    with pytest.raises(ConfigError, match="TESTBED_TIMEOUT_FACTOR must be a number above 0 and at most 1000, got '0'"):
        Cluster.attach(composition)
    assert Cluster.attach(composition, timeout_factor=3).timeout_factor == 3


def test_attaching_to_a_cluster_that_is_not_running_names_it(composition: Path) -> None:
    with pytest.raises(NotRunning, match=r"^cluster fake is not running \(no supervisor answers at .*/fake-[0-9a-f]{8}/api.sock\)$"):
        Cluster.attach(composition)
    assert not Cluster.is_running(composition)


def test_nodes_roles_and_lookups(cluster: Cluster) -> None:
    assert [n.name for n in cluster.nodes] == ["ctl", "compute1", "compute2"]
    assert [n.name for n in cluster.role("compute")] == ["compute1", "compute2"]
    assert cluster.roles == ["ctl", "compute"]
    assert cluster["ctl"].role == "ctl" and "ctl" in cluster and len(cluster) == 3
    assert [n.name for n in cluster.select("compute*")] == ["compute1", "compute2"]
    assert cluster["ctl"] == cluster.node("ctl")
    with pytest.raises(KeyError) as e:
        cluster["nope"]
    assert isinstance(e.value, UnknownNode)
    assert str(e.value) == "no node nope in cluster fake (nodes: ctl, compute1, compute2)"
    with pytest.raises(UnknownNode, match=r"no role db in cluster fake \(roles: ctl, compute\)"):
        cluster.role("db")


def test_node_status_and_state(cluster: Cluster, fake: FakeSupervisor) -> None:
    fake.set_state("compute2", "paused")
    assert cluster["compute2"].state == "paused"
    assert cluster["ctl"].status().addresses == ["10.9.0.11/24 (lan)"]
    assert cluster["ctl"].console_log == fake.state_dir / "nodes" / "ctl" / "console.log"
    assert [n.state for n in cluster.status().nodes] == ["ready", "ready", "paused"]


# -- commands ----------------------------------------------------------------


def test_succeed_returns_stdout_and_scales_the_default_timeout(cluster: Cluster, fake: FakeSupervisor) -> None:
    assert cluster["ctl"].succeed("echo hello") == "hello\n"
    assert execs(fake)[-1]["exec"]["timeout_ms"] == 300 * 5 * 1000
    assert cluster["ctl"].succeed("echo one", "echo two", timeout=2) == "one\ntwo\n"
    assert [r["exec"]["timeout_ms"] for r in execs(fake)[-2:]] == [10_000, 10_000]
    assert cluster["ctl"].succeed(["printf", "%s", "a b"]) == "a b"


def test_a_failed_command_shows_node_command_status_and_output(cluster: Cluster) -> None:
    with pytest.raises(CommandFailed) as e:
        cluster["compute1"].succeed("echo out-text; echo err-text >&2; exit 3")
    err = e.value
    assert (err.node, err.command, err.status) == ("compute1", "echo out-text; echo err-text >&2; exit 3", 3)
    assert (err.stdout, err.stderr) == ("out-text\n", "err-text\n")
    assert str(err) == (
        "command `echo out-text; echo err-text >&2; exit 3` on node compute1 failed: exit status 3\n"
        "stdout:\nout-text\nstderr:\nerr-text"
    )


def test_only_the_tail_of_a_long_output_is_in_the_message(cluster: Cluster) -> None:
    with pytest.raises(CommandFailed) as e:
        cluster["ctl"].succeed("seq 1 100; exit 1")
    message = str(e.value)
    assert "stdout:\n[... 60 lines cut]\n61\n62\n" in message and message.endswith("100\nstderr: (empty)")
    assert e.value.stdout == "".join("{}\n".format(i) for i in range(1, 101))


def test_fail_wants_a_command_that_runs_and_fails(cluster: Cluster) -> None:
    ctl = cluster["ctl"]
    assert ctl.fail("echo no; exit 1") == "no\n"
    with pytest.raises(CommandFailed, match="command `true` on node ctl succeeded but was expected to fail: exit status 0"):
        ctl.fail("true")
    with pytest.raises(CommandFailed, match=r"could not run \(not found\); fail\(\) expects a command that runs and fails: exit status 127") as e:
        ctl.fail("no-such-command-anywhere")
    assert "not found" in e.value.stderr
    with pytest.raises(CommandFailed, match=r"was expected to fail but was killed after its timeout of 1s \(timeout factor 5\)"):
        ctl.fail("sleep 30", timeout=0.2)


def test_execute_and_run_never_raise_on_the_status(cluster: Cluster) -> None:
    ctl = cluster["ctl"]
    assert ctl.execute("echo x; exit 4") == (4, "x\n")
    assert ctl.execute("kill -TERM $$") == (128 + 15, "")
    status, out = ctl.execute("sleep 30", timeout=0.1)
    assert status == 124
    r = ctl.run("echo out; echo err >&2; exit 2")
    assert (r.status, r.stdout, r.stderr, r.succeeded, r.node) == (2, "out\n", "err\n", False, "ctl")
    assert r.duration >= 0
    assert ctl.run("cat", stdin=b"fed").stdout == "fed"


def test_a_command_on_a_node_that_is_down_says_why(cluster: Cluster, fake: FakeSupervisor) -> None:
    fake.set_state("compute2", "stopped")
    with pytest.raises(SupervisorError) as e:
        cluster["compute2"].succeed("true")
    assert str(e.value) == "cannot run `true` on node compute2: its agent is not connected (node is stopped)"
    assert e.value.node == "compute2"


def test_wait_until_succeeds_retries_and_returns_stdout(cluster: Cluster, tmp_path: Path) -> None:
    counter = tmp_path / "n"
    cmd = 'n=$(cat {0} 2>/dev/null || echo 0); echo $((n+1)) > {0}; echo "try $n"; [ "$n" -ge 2 ]'.format(counter)
    assert cluster["ctl"].wait_until_succeeds(cmd) == "try 2\n"
    counter.unlink()
    assert cluster["ctl"].wait_until_fails(cmd.replace("-ge 2", "-lt 2")) == "try 2\n"


def test_wait_until_times_out_with_the_last_attempt(cluster: Cluster, fake: FakeSupervisor) -> None:
    start = time.monotonic()
    with pytest.raises(WaitTimeout) as e:
        cluster["ctl"].wait_until_succeeds("echo not yet; exit 1", timeout=0.2)
    # 0.2 s times the factor 5.
    assert 0.9 < time.monotonic() - start < 5
    assert isinstance(e.value, TimeoutError)
    assert str(e.value) == (
        "command `echo not yet; exit 1` on node ctl did not succeed within 1s (timeout factor 5); "
        "last attempt: exit status 1\nstdout:\nnot yet\nstderr: (empty)"
    )
    assert (e.value.node, e.value.status, e.value.stdout) == ("ctl", 1, "not yet\n")
    # Each attempt is bounded by what is left, at least a second.
    assert {r["exec"]["timeout_ms"] for r in execs(fake)} == {1000}
    with pytest.raises(WaitTimeout, match="did not fail within"):
        cluster["ctl"].wait_until_fails("true", timeout=0.1)


def test_wait_for_unit_port_and_file(cluster: Cluster, fake: FakeSupervisor) -> None:
    ctl = cluster["ctl"]
    fake.units[("ctl", "munge")] = "active"
    fake.ports.add(("ctl", 6817))
    fake.files[("ctl", "/run/x")] = (0o644, b"")
    ctl.wait_for_unit("munge", timeout=2)
    ctl.wait_for_open_port(6817)
    ctl.wait_for_file("/run/x")
    waits = [r for r in fake.requests if r["op"] == "wait"]
    assert [(w["for"], w["timeout_ms"]) for w in waits] == [("unit", 10_000), ("port", 1_500_000), ("file", 1_500_000)]
    with pytest.raises(ConfigError, match="port must be within 1..65535, got 0"):
        ctl.wait_for_open_port(0)


def test_wait_for_a_failed_unit_says_so_with_its_journal(cluster: Cluster, fake: FakeSupervisor) -> None:
    fake.units[("compute1", "slurmd")] = "failed"
    with pytest.raises(WaitFailed) as e:
        cluster["compute1"].wait_for_unit("slurmd")
    assert str(e.value).startswith(
        "wait_for_unit slurmd on node compute1 (timeout 25m (timeout factor 5)): unit slurmd failed:\n-- journal --\n"
    )
    assert (e.value.node, e.value.what) == ("compute1", "wait_for_unit slurmd")
    with pytest.raises(WaitFailed, match=r"wait_for_file /never on node ctl \(timeout 500ms \(timeout factor 5\)\): file /never not there"):
        cluster["ctl"].wait_for_file("/never", timeout=0.1)


def test_systemctl_and_unit_properties(cluster: Cluster, fake: FakeSupervisor) -> None:
    fake.canned["systemctl is-active munge"] = (b"active\n", b"", 0)
    fake.canned["systemctl --no-pager show slurmd --property=ActiveState"] = (b"ActiveState=active\n", b"", 0)
    fake.canned["systemctl --no-pager show slurmd"] = (b"ActiveState=active\nMainPID=42\nEnvironment=A=1 B=2\n", b"", 0)
    fake.canned["systemctl --no-pager show nope --property=ActiveState"] = (b"", b"", 1)
    ctl = cluster["ctl"]
    assert ctl.systemctl("is-active munge") == (0, "active\n")
    assert ctl.get_unit_property("slurmd", "ActiveState") == "active"
    assert ctl.get_unit_info("slurmd") == {"ActiveState": "active", "MainPID": "42", "Environment": "A=1 B=2"}
    with pytest.raises(CommandFailed, match="retrieving property ActiveState of unit nope on node ctl failed"):
        ctl.get_unit_property("nope", "ActiveState")
    ctl.systemctl("status", user="alice")
    assert execs(fake)[-1]["exec"]["command"] == {
        "shell": "su -l alice --shell /bin/sh -c 'XDG_RUNTIME_DIR=/run/user/$(id -u) systemctl --user status'"
    }


# -- files ---------------------------------------------------------------------


def test_copy_to_and_from_keep_modes_and_names(cluster: Cluster, fake: FakeSupervisor, tmp_path: Path) -> None:
    src = tmp_path / "job.sh"
    src.write_bytes(b"#!/bin/sh\necho job\n")
    os.chmod(src, 0o750)
    ctl = cluster["ctl"]
    ctl.copy_to(src, "/root/")
    ctl.copy_to(str(src), "/opt/run.sh")
    assert fake.files[("ctl", "/root/job.sh")] == (0o750, b"#!/bin/sh\necho job\n")
    assert fake.files[("ctl", "/opt/run.sh")][0] == 0o750
    out = tmp_path / "out"
    written = ctl.copy_from("/root/job.sh", out / "deep" / "copy.sh")
    assert written == out / "deep" / "copy.sh" and written.read_bytes() == b"#!/bin/sh\necho job\n"
    assert written.stat().st_mode & 0o777 == 0o750
    # Into a folder, the file keeps its name.
    assert ctl.copy_from("/opt/run.sh", out) == out / "run.sh"


def test_copy_errors_name_the_path(cluster: Cluster, tmp_path: Path) -> None:
    ctl = cluster["ctl"]
    with pytest.raises(ConfigError, match="copy_to: the guest path must be absolute, got 'root/x'"):
        ctl.copy_to(tmp_path, "root/x")
    with pytest.raises(ConfigError, match="copy_to: .* is a directory; copy_to copies single files"):
        ctl.copy_to(tmp_path, "/root/x")
    with pytest.raises(ConfigError, match="copy_to: cannot read .*/missing: No such file or directory"):
        ctl.copy_to(tmp_path / "missing", "/root/x")
    with pytest.raises(SupervisorError, match="^copy_from /etc/nope on node ctl: cannot read /etc/nope: no such file$"):
        ctl.copy_from("/etc/nope", tmp_path)


def test_forward_connects_to_a_port_in_the_node(cluster: Cluster, fake: FakeSupervisor) -> None:
    fake.ports.add(("compute1", 8786))
    with cluster["compute1"].forward(8786) as conn:
        conn.settimeout(5)
        data = b""
        while not data.endswith(b"\n"):
            data += conn.recv(64)
        assert data == b"hello from compute1\n"


# -- power -----------------------------------------------------------------------


def test_crash_then_start_waits_until_ready(cluster: Cluster, fake: FakeSupervisor) -> None:
    node = cluster["compute1"]
    node.crash()
    assert fake.states["compute1"] == "stopped"
    start = time.monotonic()
    node.start()
    assert fake.states["compute1"] == "ready"
    assert time.monotonic() - start >= fake.boot_delay
    # A running node is not started again.
    before = len(fake.requests)
    node.start()
    assert [r["op"] for r in fake.requests[before:]] == ["status", "status"]


def test_reboot_waits_and_a_node_that_fails_to_start_says_why(cluster: Cluster, fake: FakeSupervisor) -> None:
    cluster["ctl"].reboot()
    assert fake.states["ctl"] == "ready"
    fake.start_outcome["compute2"] = "failed"
    cluster["compute2"].shutdown()
    with pytest.raises(NodeNotReady) as e:
        cluster.start_all()
    assert str(e.value) == (
        "node compute2 did not come up (failed): unit etcd.service failed: the fake said so; console log: {}".format(
            fake.state_dir / "nodes" / "compute2" / "console.log"
        )
    )
    assert (e.value.node, e.value.state) == ("compute2", "failed")


def test_pause_resume_and_an_unsupported_action(cluster: Cluster, fake: FakeSupervisor) -> None:
    cluster["ctl"].pause()
    assert fake.states["ctl"] == "paused"
    with pytest.raises(NodeNotReady, match="node ctl is paused; resume it before waiting for it"):
        cluster.wait_until_ready()
    cluster["ctl"].resume()
    assert fake.states["ctl"] == "ready"
    fake.unsupported.add("pause")
    with pytest.raises(Unsupported, match="the qemu backend cannot pause a node"):
        cluster["compute1"].pause()
    fake.power_failures["shutdown"] = "node compute1 did not stop within 60s (still ready)"
    with pytest.raises(SupervisorError, match=r"^node compute1 did not stop within 60s \(still ready\)$"):
        cluster["compute1"].shutdown()


def test_power_requests_wait_the_boot_timeout(cluster: Cluster, fake: FakeSupervisor) -> None:
    fake.mode = "silent"
    cluster.boot_timeout = 0.2
    start = time.monotonic()
    with pytest.raises(TestbedError, match=r"did not answer the power request within 1.2s"):
        cluster["ctl"].crash()
    assert time.monotonic() - start < 5


def test_watch_follows_a_boot(cluster: Cluster, fake: FakeSupervisor) -> None:
    fake._power("compute1", "reboot")
    seen = []
    status = cluster.watch(lambda n: seen.append((n.name, n.state)))
    assert ("compute1", "booting") in seen and seen[-1] == ("compute1", "ready")
    assert all(n.state == "ready" for n in status.nodes)


# -- faults ------------------------------------------------------------------------


def faults(fake: FakeSupervisor) -> list:
    return [{k: v for k, v in r.items() if k != "op"} for r in fake.requests if r["op"] == "fault"]


def test_a_partition_is_removed_when_its_block_ends(cluster: Cluster, fake: FakeSupervisor) -> None:
    with cluster.partition(["ctl"], [cluster["compute1"], "compute2"]) as p:
        assert fake.partition == [["ctl"], ["compute1", "compute2"]]
        assert p.groups == [["ctl"], ["compute1", "compute2"]]
    assert faults(fake) == [
        {"fault": "partition", "groups": [["ctl"], ["compute1", "compute2"]]},
        {"fault": "partition", "groups": []},
    ]
    assert p.undone
    # The Rhai form, a list of groups, applies until undone or healed.
    p2 = cluster.partition([["compute2"]])
    assert fake.partition == [["compute2"]]
    p2.undo()
    p2.undo()
    assert fake.partition == [] and len(faults(fake)) == 4
    with pytest.raises(UnknownNode, match="no node nope in cluster fake"):
        cluster.partition(["nope"])
    with pytest.raises(TypeError, match="partition takes groups of nodes"):
        cluster.partition("ctl", "compute1")  # type: ignore[arg-type]
    assert len(faults(fake)) == 4


def test_block_undoes_itself_and_heal_removes_everything(cluster: Cluster, fake: FakeSupervisor) -> None:
    with cluster["compute1"].block():
        assert fake.blocked == {"compute1"}
    assert fake.blocked == set()
    cluster.block("compute2")
    cluster.partition(["ctl"])
    cluster.link("ctl", "compute1").down()
    cluster.heal()
    assert (fake.blocked, fake.partition, fake.links) == (set(), [], {})
    assert [str(e) for e in cluster.fault_history()] == [
        "block compute1",
        "unblock compute1",
        "block compute2",
        "partition [ctl]",
        'link ctl-compute1 {"delay": 0.0, "down": true, "jitter": 0.0, "loss": 0.0, "rate_bps": null}',
        "heal",
    ]


def test_a_link_changes_at_once_chains_and_is_cleared_when_its_block_ends(cluster: Cluster, fake: FakeSupervisor) -> None:
    with cluster.link("ctl", cluster["compute1"]).delay("50ms", jitter=0.005).loss("10%") as link:
        assert link.rule == LinkRule(loss=0.1, delay_ms=50.0, jitter_ms=5.0)
        link.rate("10mbit")
        assert link.rule == LinkRule(loss=0.1, delay_ms=50.0, jitter_ms=5.0, rate_bps=10_000_000)
        link.down().up()
        assert link.rule is not None and not link.rule.down
    assert link.rule == LinkRule() and link.rule.is_noop
    assert faults(fake) == [
        {"fault": "link", "a": "ctl", "b": "compute1", "delay_ms": 50.0, "jitter_ms": 5.0},
        {"fault": "link", "a": "ctl", "b": "compute1", "loss": 0.1},
        {"fault": "link", "a": "ctl", "b": "compute1", "rate_bps": 10_000_000},
        {"fault": "link", "a": "ctl", "b": "compute1", "down": True},
        {"fault": "link", "a": "ctl", "b": "compute1", "down": False},
        {"fault": "link", "a": "ctl", "b": "compute1", "clear": True},
    ]
    assert fake.links == {}


def test_link_arguments_are_checked_before_anything_is_sent(cluster: Cluster, fake: FakeSupervisor) -> None:
    with pytest.raises(ConfigError, match=r"jitter \(20ms\) must not exceed the delay \(10ms\)"):
        cluster.link("ctl", "compute1").delay(0.01, "20ms")
    with pytest.raises(ConfigError, match="link needs two different nodes, got ctl twice"):
        cluster.link("ctl", "ctl")
    with pytest.raises(ConfigError, match="loss must be a fraction from 0 to 1, got 1.5"):
        cluster.link("ctl", "compute1").loss(1.5)
    with pytest.raises(ConfigError, match='ambiguous rate unit in "10mb"'):
        cluster.link("ctl", "compute1").rate("10mb")
    assert faults(fake) == []


def test_an_undo_that_fails_does_not_hide_the_error_that_ended_the_block(cluster: Cluster, fake: FakeSupervisor) -> None:
    with pytest.raises(ValueError, match="the test's own error"):
        with cluster.partition(["ctl"]):
            fake.mode = "hangup"
            raise ValueError("the test's own error")
    fake.mode = "normal"
    with pytest.raises(ProtocolError, match="closed the connection during the fault request"):
        with cluster.link("ctl", "compute2").loss(0.5):
            fake.mode = "hangup"


# -- snapshots ----------------------------------------------------------------------


def test_snapshot_and_restore(cluster: Cluster, fake: FakeSupervisor) -> None:
    info = cluster.snapshot("booted")
    assert info.name == "booted" and [n.name for n in info.nodes] == ["ctl", "compute1", "compute2"]
    assert cluster.restore("booted").took_ms == 567
    with pytest.raises(SupervisorError, match="no snapshot gone of cluster fake"):
        cluster.restore("gone")
    fake.backend = "podman"
    with pytest.raises(Unsupported, match="the podman backend cannot save clusters"):
        cluster.snapshot("x")


# -- artifacts ----------------------------------------------------------------------


def test_artifacts_have_consoles_states_journals_status_and_faults(cluster: Cluster, fake: FakeSupervisor, tmp_path: Path) -> None:
    fake.canned["journalctl -b --no-pager"] = (b"-- Journal begins --\nslurmd[42]: started\n", b"", 0)
    fake.set_state("compute2", "stopped", "crashed")
    cluster.partition(["ctl"])
    a = cluster.collect_artifacts(tmp_path / "art")
    files = sorted(str(f) for f in a.files)
    assert files == sorted(
        [
            "status.json",
            "ctl/console.log",
            "ctl/state.txt",
            "ctl/journal.txt",
            "compute1/console.log",
            "compute1/state.txt",
            "compute1/journal.txt",
            "compute2/console.log",
            "compute2/state.txt",
            "faults.txt",
            "faults.json",
            "problems.txt",
        ]
    )
    d = tmp_path / "art"
    assert (d / "ctl" / "journal.txt").read_text() == "-- Journal begins --\nslurmd[42]: started\n"
    assert (d / "compute2" / "state.txt").read_text() == "stopped\ncrashed\n"
    assert (d / "ctl" / "console.log").read_text().startswith("[  0.00] ctl boot line 0\n")
    assert json.loads((d / "status.json").read_text())["nodes"][2]["state"] == "stopped"
    assert (d / "faults.txt").read_text().endswith(" partition [ctl]\n")
    assert a.problems == ["node compute2 is stopped: no journal (its console log is all there is)"]
    assert (d / "problems.txt").read_text() == a.problems[0] + "\n"
    assert a.journals == {"ctl": d / "ctl" / "journal.txt", "compute1": d / "compute1" / "journal.txt"}
    journal_execs = [r for r in execs(fake) if r["exec"]["command"] == {"argv": ["journalctl", "-b", "--no-pager"]}]
    assert [r["exec"]["timeout_ms"] for r in journal_execs] == [150_000, 150_000]


# -- the library prints nothing ----------------------------------------------------


def test_the_library_prints_nothing(cluster: Cluster, fake: FakeSupervisor, capfd: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="testbed")
    cluster["ctl"].succeed("echo quiet")
    with cluster.partition(["ctl"]):
        pass
    with pytest.raises(CommandFailed):
        cluster["ctl"].succeed("exit 1")
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    messages = [r.getMessage() for r in caplog.records if r.name == "testbed"]
    assert messages[0].startswith("ctl$ echo quiet -> exit status 0 (")
    assert "partition [ctl]" in messages and "partition removed" in messages
