"""The pure parts: where a cluster's state directory is (the same names as
the Rust code, checked against values computed by it), durations, rates,
losses, the timeout factor and how durations are written back."""

from __future__ import annotations

import datetime
import importlib.util
import os
from pathlib import Path

import pytest

from testbed import ConfigError, Timeouts, timeout_factor
from testbed.errors import format_seconds, tail
from testbed.state import (
    StateDir,
    _name_without_tomllib,
    absolute,
    cluster_key,
    cluster_name,
    name_from_folder,
    resolve_composition,
    root,
)
from testbed.units import parse_duration, parse_loss, parse_rate, seconds

#: cluster_key("slurm", PATH) as crates/api/src/state.rs computes it, with
#: /tmp/fnv as the current folder (printed by a Rust program calling the
#: same fnv1a and std::path::absolute).
RUST_KEYS = {
    "/a/testbed.toml": "slurm-27308281",
    "/b/testbed.toml": "slurm-b94bc166",
    "/work/x/examples/etcd/testbed.toml": "slurm-361f6845",
    "examples/etcd/testbed.toml": "slurm-70bd3d93",
    "./examples/./etcd//testbed.toml": "slurm-70bd3d93",
    "examples/../etcd/testbed.toml": "slurm-f9d6c81e",
    "//srv/c/testbed.toml": "slurm-dbab35bc",
    "///srv/c/testbed.toml": "slurm-9366cc11",
    "/é/testbed.toml": "slurm-1b8ac2fc",
}


def test_cluster_keys_are_the_rust_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getcwd", lambda: "/tmp/fnv")
    for path, key in RUST_KEYS.items():
        assert cluster_key("slurm", path) == key, path


def test_absolute_is_rusts_absolute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getcwd", lambda: "/home/u")
    assert absolute("a/./b//c") == "/home/u/a/b/c"
    assert absolute("./a/../b") == "/home/u/a/../b"
    assert absolute("/x/y/") == "/x/y/"
    assert absolute("//net/x") == "//net/x"
    assert absolute("///x") == "/x"
    assert absolute(Path("t.toml")) == "/home/u/t.toml"


def test_the_state_root_follows_the_variables() -> None:
    assert root({"TESTBED_STATE_DIR": "/s", "XDG_RUNTIME_DIR": "/run/user/1"}) == Path("/s")
    assert root({"TESTBED_STATE_DIR": "", "XDG_RUNTIME_DIR": "/run/user/1"}) == Path("/run/user/1/testbed")
    assert root({}) == Path("/tmp/testbed-{}".format(os.getuid()))
    d = StateDir.for_cluster("slurm", "/a/testbed.toml", {"TESTBED_STATE_DIR": "/s"})
    assert d.path == Path("/s/slurm-27308281")
    assert d.api_socket == Path("/s/slurm-27308281/api.sock")


def test_a_folder_means_its_testbed_toml(tmp_path: Path) -> None:
    assert resolve_composition(tmp_path) == tmp_path / "testbed.toml"
    assert resolve_composition(tmp_path / "x.toml") == tmp_path / "x.toml"
    assert resolve_composition(None) == Path("testbed.toml")


def test_the_cluster_name_comes_from_the_file_or_the_folder(tmp_path: Path) -> None:
    named = tmp_path / "named.toml"
    named.write_text('# a cluster\n[cluster]\ndistro = "debian/bookworm"\nname = "slurm"  # the name\n')
    assert cluster_name(named) == "slurm"
    folder = tmp_path / "My Etcd_Test"
    folder.mkdir()
    (folder / "testbed.toml").write_text('[roles.etcd]\ncount = 3\n')
    assert cluster_name(folder / "testbed.toml") == "my-etcd-test"
    digits = tmp_path / "1234"
    digits.mkdir()
    (digits / "testbed.toml").write_text("")
    with pytest.raises(ConfigError, match='no cluster name: the folder name "1234" has no letters'):
        cluster_name(digits / "testbed.toml")
    with pytest.raises(ConfigError, match="cannot read composition .*missing.toml: No such file or directory"):
        cluster_name(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[cluster\n")
    if importlib.util.find_spec("tomllib") is None:
        # Before Python 3.11 the file is not parsed, only searched for the
        # name; the folder's name it is (testbed itself will say what is
        # wrong with the file).
        assert cluster_name(bad) == name_from_folder(tmp_path.name)
    else:
        with pytest.raises(ConfigError, match="is not valid TOML"):
            cluster_name(bad)


def test_names_are_read_without_tomllib_too() -> None:
    assert _name_without_tomllib('[cluster]\nname = "a"\n') == "a"
    assert _name_without_tomllib("[ cluster ]  # c\n  name='b'\n") == "b"
    assert _name_without_tomllib('cluster.name = "c"\n') == "c"
    assert _name_without_tomllib('cluster = { distro = "x", name = "d" }\n') == "d"
    assert _name_without_tomllib('[roles.x]\nname = "no"\n[cluster]\ndistro = "x"\n') is None
    assert _name_without_tomllib('[cluster]\n[[hosts]]\nname = "no"\n') is None


def test_folder_names_become_cluster_names() -> None:
    assert name_from_folder("Slurm") == "slurm"
    assert name_from_folder("2024-my__cluster!") == "my-cluster"
    assert name_from_folder("x" * 40) == "x" * 31
    assert name_from_folder("---") is None


def test_durations() -> None:
    assert parse_duration("2") == 2.0
    assert parse_duration("0.5") == 0.5
    assert parse_duration("500ms") == 0.5
    assert parse_duration("1.5s") == 1.5
    assert parse_duration("1m30s") == 90.0
    assert parse_duration("2h") == 7200.0
    assert parse_duration("0") == 0.0
    for bad in ["", "s", "-1", "1d", "1.2.3s", "nan", "inf", "1_0"]:
        with pytest.raises(ConfigError, match="^bad duration"):
            parse_duration(bad)
    assert seconds(3) == 3.0 and seconds(0.25) == 0.25
    assert seconds(datetime.timedelta(minutes=2)) == 120.0
    assert seconds("5m") == 300.0
    with pytest.raises(ConfigError, match="timeout must be a non-negative number, got -1"):
        seconds(-1)
    with pytest.raises(ConfigError, match="timeout: bad duration"):
        seconds("soon")
    with pytest.raises(ConfigError, match="timeout must be a number of seconds"):
        seconds(True)
    with pytest.raises(ConfigError, match="delay must be a number of seconds or a string like \"2s\", got list"):
        seconds([1], "delay")  # type: ignore[arg-type]


def test_rates_and_losses() -> None:
    assert parse_rate("10mbit") == 10_000_000
    assert parse_rate("512kbit") == 512_000
    assert parse_rate("1Gbit") == 1_000_000_000
    assert parse_rate("800bit") == 800
    assert parse_rate("1.5mbit") == 1_500_000
    assert parse_rate("0") == 0 and parse_rate(9600) == 9600
    for bad in ["", "mbit", "10mb", "-1mbit", "10 tbit", "10"]:
        with pytest.raises(ConfigError):
            parse_rate(bad)
    assert parse_loss("10%") == 0.1
    assert parse_loss("0.25") == 0.25 and parse_loss(1) == 1.0
    for bad in ["150%", "x", -0.1, float("nan")]:
        with pytest.raises(ConfigError):
            parse_loss(bad)


def test_the_factor_follows_the_accelerator_unless_overridden() -> None:
    assert timeout_factor("kvm") == 1.0
    assert timeout_factor("none") == 1.0
    assert timeout_factor("tcg") == 5.0
    assert timeout_factor("tcg", "") == 5.0
    assert timeout_factor("kvm", " 2.5 ") == 2.5
    for bad in ["0", "-1", "x", "nan", "inf", "1e9", "1_0"]:
        with pytest.raises(ConfigError, match="TESTBED_TIMEOUT_FACTOR"):
            timeout_factor("kvm", bad)


def test_timeouts_scale_and_describe() -> None:
    t = Timeouts(factor=5.0)
    assert t.scale(60) == 300
    assert t.describe(300) == "5m (timeout factor 5)"
    assert Timeouts().describe(300) == "5m"
    assert Timeouts(factor=2.5).describe(1.5) == "1.5s (timeout factor 2.5)"
    d = Timeouts()
    assert (d.command, d.wait, d.retry_interval, d.poll_interval, d.artifact_command) == (300, 300, 1, 0.5, 30)
    assert (d.reply_margin, d.short_reply) == (60, 120)


def test_durations_read_back() -> None:
    assert format_seconds(0.25) == "250ms"
    assert format_seconds(2) == "2s"
    assert format_seconds(1.5) == "1.5s"
    assert format_seconds(300) == "5m"
    assert format_seconds(90) == "90s"
    assert format_seconds(1800) == "30m"
    assert format_seconds(5400) == "1h30m"
    assert format_seconds(900) == "15m"


def test_tails_say_what_was_cut() -> None:
    text = "\n".join(str(i) for i in range(1, 46))
    assert tail(text) == "[... 5 lines cut]\n" + "\n".join(str(i) for i in range(6, 46))
    assert tail("a\nb") == "a\nb"


def test_a_state_directory_someone_else_could_control_is_refused(tmp_path: Path) -> None:
    from testbed import Cluster, UnsafeStateDir

    comp = tmp_path / "comp"
    comp.mkdir()
    (comp / "testbed.toml").write_text('[cluster]\nname = "c"\n')
    planted = tmp_path / "planted"
    planted.mkdir()
    os.chmod(planted, 0o777)
    state = StateDir(planted / "c-00000000")
    with pytest.raises(UnsafeStateDir, match="others may write in it"):
        state.check()
    # A client never connects to a socket in such a folder.
    with pytest.raises(UnsafeStateDir, match="refusing the state directory"):
        Cluster(comp, state_dir=state)
    # A symbolic link where the cluster's folder would be.
    own = tmp_path / "own"
    own.mkdir(mode=0o700)
    (own / "c-11111111").symlink_to(planted)
    with pytest.raises(UnsafeStateDir, match="symbolic link"):
        StateDir(own / "c-11111111").check()
    # One's own private folder passes, existing or not.
    StateDir(own / "c-22222222").check()
    (own / "c-22222222").mkdir(mode=0o700)
    StateDir(own / "c-22222222").check()
