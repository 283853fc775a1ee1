"""``Cluster.up`` / ``down`` / ``build`` through a fake ``testbed``
command: the arguments given to the CLI, the rule of ``testbed test`` for
taking the cluster down (only one this brought up, unless ``keep``), and
a failing ``up``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from conftest import FAST, FakeCli
from fake_supervisor import FakeSupervisor
from testbed import CliError, Cluster, ConfigError


def test_up_brings_the_cluster_up_and_the_block_takes_it_down(fake_cli: FakeCli, composition: Path) -> None:
    with Cluster.up(composition.parent, scale={"compute": 3}, backend="qemu", cold=True, timeouts=FAST) as cluster:
        assert [n.name for n in cluster.nodes] == ["ctl", "compute1", "compute2", "compute3"]
        assert cluster.owned and not cluster.was_running
        assert cluster["compute3"].succeed("echo $FAKE_NODE") == "compute3\n"
        assert Cluster.is_running(composition)
    assert fake_cli.calls() == [
        ["up", str(composition), "--scale", "compute=3", "--backend", "qemu", "--cold"],
        ["down", str(composition)],
    ]
    assert not Cluster.is_running(composition)


def test_up_passes_every_option(fake_cli: FakeCli, composition: Path) -> None:
    cluster = Cluster.up(
        composition,
        scale=["compute=1"],
        accel="tcg",
        from_snapshot="booted",
        keep_failed=True,
        timeout="10m",
        offline=True,
        vendor=["/v1", "/v2"],
        backend="libvirt",
        connect="qemu:///system",
        hosts=["qemu+ssh://a/system"],
    )
    cluster.down()
    assert fake_cli.calls()[0] == [
        "up", str(composition), "--scale", "compute=1", "--backend", "libvirt", "--accel", "tcg",
        "--from", "booted", "--keep-failed", "--timeout", "600000ms", "--offline",
        "--vendor", "/v1", "--vendor", "/v2", "--connect", "qemu:///system", "--host", "qemu+ssh://a/system",
    ]  # fmt: skip
    assert [n.name for n in cluster.nodes] == ["ctl", "compute"]


def test_bad_options_are_refused_before_anything_runs(fake_cli: FakeCli, composition: Path) -> None:
    with pytest.raises(ConfigError, match="unknown backend 'vmware' \\(one of qemu, podman, docker, libvirt\\)"):
        Cluster.up(composition, backend="vmware")
    with pytest.raises(ConfigError, match="cold and from_snapshot exclude each other"):
        Cluster.up(composition, cold=True, from_snapshot="x")
    with pytest.raises(ConfigError, match="scale 'compute': write ROLE=N"):
        Cluster.up(composition, scale=["compute"])
    with pytest.raises(ConfigError, match="scale of role compute: the count must be a whole number, got 'x'"):
        Cluster.up(composition, scale={"compute": "x"})  # type: ignore[dict-item]
    assert fake_cli.calls() == []


def test_keep_leaves_the_cluster_running(fake_cli: FakeCli, composition: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="testbed")
    with Cluster.up(composition, keep=True):
        pass
    assert Cluster.is_running(composition)
    assert any("is left running" in r.getMessage() for r in caplog.records)
    Cluster.attach(composition).down()
    assert fake_cli.verbs() == ["up", "down"]
    assert not Cluster.is_running(composition)


def test_a_cluster_that_was_running_is_used_and_left_running(fake_cli: FakeCli, fake: FakeSupervisor, composition: Path) -> None:
    with Cluster.up(composition, scale={"compute": 5}) as cluster:
        assert cluster.was_running and not cluster.owned
        assert len(cluster.nodes) == 3
    assert fake_cli.calls() == []
    assert Cluster.is_running(composition)


def test_the_cluster_goes_down_even_when_the_block_fails(fake_cli: FakeCli, composition: Path) -> None:
    with pytest.raises(RuntimeError, match="inside"):
        with Cluster.up(composition):
            raise RuntimeError("inside")
    assert fake_cli.verbs() == ["up", "down"]
    assert not Cluster.is_running(composition)


def test_a_failing_up_raises_with_its_output(fake_cli: FakeCli, composition: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="testbed.cli")
    monkeypatch.setenv("FAKE_TESTBED_UP_FAILS", "1")
    with pytest.raises(CliError) as e:
        Cluster.up(composition)
    assert e.value.returncode == 1
    assert str(e.value) == (
        "testbed up {} failed with exit status 1\n"
        "testbed: locking and building images (fake)\n"
        "   12.0s node db failed: unit postgresql.service failed\n"
        "error: cluster fake did not come up".format(composition)
    )
    # Its progress was logged as it came, line by line.
    lines = [r.getMessage() for r in caplog.records if r.name == "testbed.cli"]
    assert lines[0] == "$ testbed up {}".format(composition)
    assert "   12.0s node db failed: unit postgresql.service failed" in lines


def test_build_runs_testbed_build(fake_cli: FakeCli, composition: Path) -> None:
    assert Cluster.build(composition.parent, offline=True, vendor=["/debs"]) == "every image is in the store\n"
    assert fake_cli.calls() == [["build", str(composition), "--offline", "--vendor", "/debs"]]


def test_a_missing_testbed_command_says_how_to_give_it(composition: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CliError, match=r"cannot find the testbed command: put it on PATH or set \$TESTBED to its path"):
        Cluster.up(composition)
    monkeypatch.setenv("TESTBED", str(tmp_path / "nope"))
    with pytest.raises(CliError, match=r"the testbed command .*/nope is not an executable file \(from \$TESTBED\)"):
        Cluster.build(composition)
