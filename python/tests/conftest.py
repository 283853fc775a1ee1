"""Fixtures of the client's tests: a fake supervisor (``fake_supervisor.py``)
serving the API of a three-node cluster, its composition, the attached
:class:`testbed.Cluster`, and a fake ``testbed`` command for up/down/build.
No test here boots anything."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Iterator, List

import pytest

from fake_supervisor import FakeSupervisor
from testbed import Cluster, StateDir, Timeouts

pytest_plugins = ["pytester"]

HERE = Path(__file__).resolve().parent

#: The nodes of the fake cluster.
NODES = [("ctl", "ctl"), ("compute1", "compute"), ("compute2", "compute")]

COMPOSITION = """\
[cluster]
name = "fake"

[roles.ctl]
services = ["munge", "slurmctld"]

[roles.compute]
count = 2                       # compute1, compute2
services = ["munge", "slurmd"]
"""

#: Short margins and intervals, so that tests of timeouts take a second,
#: not minutes.
FAST = Timeouts(reply_margin=1.0, short_reply=3.0, retry_interval=0.05, poll_interval=0.02)


@pytest.fixture(autouse=True)
def state_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``$TESTBED_STATE_DIR`` in a short folder of its own (unix socket
    paths are limited to 107 bytes); the factor and composition variables
    unset."""
    root = Path(tempfile.mkdtemp(prefix="tb-", dir="/tmp"))
    monkeypatch.setenv("TESTBED_STATE_DIR", str(root))
    for name in ("TESTBED_TIMEOUT_FACTOR", "TESTBED_COMPOSITION", "TESTBED"):
        monkeypatch.delenv(name, raising=False)
    yield root
    _down_leftovers(root)
    shutil.rmtree(root, ignore_errors=True)


def _down_leftovers(root: Path) -> None:
    """Fake supervisor processes a failed test left running are told to stop."""
    for sock in root.glob("*/api.sock"):
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                s.connect(str(sock))
                s.sendall(b'{"op":"down"}\n')
                s.recv(100)
        except OSError:
            pass


@pytest.fixture
def composition(tmp_path: Path) -> Path:
    """A composition of the fake cluster: ctl, compute1, compute2."""
    folder = tmp_path / "comp"
    folder.mkdir()
    (folder / "testbed.toml").write_text(COMPOSITION)
    return folder / "testbed.toml"


@pytest.fixture
def fake(composition: Path) -> Iterator[FakeSupervisor]:
    """The fake supervisor of the composition's cluster, running."""
    state = StateDir.for_composition(composition)
    supervisor = FakeSupervisor(
        state.path,
        NODES,
        composition=str(composition),
        services={"ctl": ["munge", "slurmctld"], "compute1": ["munge", "slurmd"], "compute2": ["munge", "slurmd"]},
    ).start()
    yield supervisor
    supervisor.stop()


@pytest.fixture
def cluster(fake: FakeSupervisor, composition: Path) -> Cluster:
    """The fake cluster, attached, with short margins."""
    return Cluster.attach(composition, timeouts=FAST)


class FakeCli:
    """The fake ``testbed`` command (``$TESTBED``) and what it was asked."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def calls(self) -> List[List[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def verbs(self) -> List[str]:
        return [c[0] for c in self.calls()]


@pytest.fixture
def fake_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCli:
    """``$TESTBED`` set to a fake command whose ``up`` starts a fake
    supervisor process and ``down`` stops it."""
    wrapper = tmp_path / "bin" / "testbed"
    wrapper.parent.mkdir()
    wrapper.write_text(
        "#!/bin/sh\nexec {} {} \"$@\"\n".format(sys.executable, HERE / "fake_testbed.py")
    )
    os.chmod(wrapper, 0o755)
    log = tmp_path / "testbed-calls.jsonl"
    monkeypatch.setenv("TESTBED", str(wrapper))
    monkeypatch.setenv("FAKE_TESTBED_LOG", str(log))
    return FakeCli(log)
