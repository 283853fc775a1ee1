"""What is kept of a failed test: for each node its serial console log,
its state and its boot journal (``journalctl -b --no-pager``, read through
the agent), plus the cluster's status and the switch's fault history: the
layout of ``testbed test``'s artifacts (``crates/driver/src/artifacts.rs``),
with one whole boot journal per node.

Collection never stops at the first problem: a node that is down has no
journal to read, but its console log still tells how it ended. Every
problem is recorded in ``problems.txt`` and returned.

::

    status.json            the cluster's status
    faults.txt, faults.json  the switch's fault history
    problems.txt           what could not be collected
    NODE/console.log       the serial console since the node last started
    NODE/state.txt         its state, and why it failed or stopped
    NODE/journal.txt       journalctl -b --no-pager
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Union

from .errors import TestbedError

if TYPE_CHECKING:
    from .cluster import Cluster

log = logging.getLogger("testbed.artifacts")

#: The command that reads a node's journal since its last boot.
JOURNAL_COMMAND = ["journalctl", "-b", "--no-pager"]

#: The states in which a node's agent answers (so its journal can be read).
_AGENT_STATES = ("ready", "activating", "failed")


@dataclass
class Artifacts:
    """What :func:`collect` wrote and what it could not get."""

    dir: Path
    #: Files written, relative to ``dir``.
    files: List[Path] = field(default_factory=list)
    #: What could not be collected, one sentence each.
    problems: List[str] = field(default_factory=list)
    #: Each node's console log, by node (its file, when it was copied).
    consoles: Dict[str, Path] = field(default_factory=dict)
    #: Each node's boot journal, by node (its file, when it was read).
    journals: Dict[str, Path] = field(default_factory=dict)

    def write(self, rel: Union[str, Path], data: bytes) -> bool:
        path = self.dir / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        except OSError as e:
            self.problems.append("cannot write {}: {}".format(path, e.strerror or e))
            return False
        self.files.append(Path(rel))
        return True


def collect(cluster: "Cluster", dest: Path) -> Artifacts:
    """Collects the artifacts of ``cluster`` into ``dest`` (created if
    needed). Raises only if ``dest`` cannot be created."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TestbedError(
            "cannot create the artifacts folder {}: {}".format(dest, e.strerror or e)
        ) from None
    out = Artifacts(dest)
    try:
        status = cluster.status()
    except TestbedError as e:
        out.problems.append("cannot read the cluster's status: {}".format(e))
    else:
        out.write("status.json", (json.dumps(status.to_json(), indent=2) + "\n").encode())
        for node in status.nodes:
            name = node.name
            try:
                console = Path(node.console_log).read_bytes()
            except OSError as e:
                out.problems.append(
                    "node {}: cannot read the console log {}: {}".format(
                        name, node.console_log, e.strerror or e
                    )
                )
            else:
                if out.write(Path(name) / "console.log", console):
                    out.consoles[name] = dest / name / "console.log"
            state = node.state + "\n" + (node.message + "\n" if node.message else "")
            out.write(Path(name) / "state.txt", state.encode())
            if node.state not in _AGENT_STATES:
                out.problems.append(
                    "node {} is {}: no journal (its console log is all there is)".format(
                        name, node.state
                    )
                )
                continue
            try:
                # The timeout is scaled by the factor, as every other.
                r = cluster.node(name).run(JOURNAL_COMMAND, cluster.timeouts.artifact_command)
            except TestbedError as e:
                out.problems.append("node {}: cannot read the journal: {}".format(name, e))
                continue
            if r.succeeded:
                if out.write(Path(name) / "journal.txt", r.stdout_bytes):
                    out.journals[name] = dest / name / "journal.txt"
            else:
                out.problems.append(
                    "node {}: {} ended with {}: {}".format(
                        name, " ".join(JOURNAL_COMMAND), r.exit, r.stderr.strip()
                    )
                )
    try:
        events = cluster.fault_history()
    except TestbedError as e:
        out.problems.append("cannot read the fault history: {}".format(e))
    else:
        text = "".join("{:.3f} {}\n".format(e.at, e.change) for e in events)
        out.write("faults.txt", (text or "no faults were applied\n").encode())
        out.write(
            "faults.json",
            (json.dumps([{"at": e.at, "change": e.change} for e in events], indent=2) + "\n").encode(),
        )
    problems = "\n".join(out.problems) or "everything was collected"
    out.write("problems.txt", (problems + "\n").encode())
    for p in out.problems:
        log.warning("artifacts: %s", p)
    return out
