"""A fake ``testbed`` command for the tests of ``up``/``down``/``build``
(the only verbs the Python package runs): ``up`` starts a fake supervisor
process (``fake_supervisor.py``) where the real one would run, with the
composition's nodes; ``down`` asks it to stop. Every invocation is appended,
as a JSON list, to ``$FAKE_TESTBED_LOG``. ``$FAKE_TESTBED_UP_FAILS`` makes
``up`` fail the way the real one reports a node that did not come up.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

from testbed.state import StateDir, cluster_name, resolve_composition

HERE = Path(__file__).resolve().parent


def roles(composition: Path, scale: Dict[str, int]) -> List[Tuple[str, str]]:
    """The nodes of a composition with only ``[roles.NAME]`` and ``count``."""
    counts: Dict[str, int] = {}
    current = None
    for line in composition.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("[roles.") and line.endswith("]"):
            current = line[len("[roles.") : -1]
            counts[current] = 1
        elif line.startswith("[") :
            current = None
        elif current and line.replace(" ", "").startswith("count="):
            counts[current] = int(line.split("=")[1])
    counts.update({r: n for r, n in scale.items() if r in counts})
    nodes = []
    for role, n in counts.items():
        names = [role] if n == 1 else ["{}{}".format(role, i) for i in range(1, n + 1)]
        nodes += [(name, role) for name in names]
    return nodes


def main(argv: List[str]) -> int:
    log = os.environ.get("FAKE_TESTBED_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps(argv) + "\n")
    verb, path = argv[0], Path(argv[1])
    file = resolve_composition(path)
    state = StateDir.for_cluster(cluster_name(file), file)
    if verb == "up":
        scale: Dict[str, int] = {}
        for i, arg in enumerate(argv):
            if arg == "--scale":
                role, count = argv[i + 1].split("=")
                scale[role] = int(count)
        print("testbed: locking and building images (fake)", file=sys.stderr, flush=True)
        if os.environ.get("FAKE_TESTBED_UP_FAILS"):
            print("   12.0s node db failed: unit postgresql.service failed", file=sys.stderr)
            print("error: cluster fake did not come up", file=sys.stderr)
            return 1
        nodes = roles(file, scale)
        state.path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "fake_supervisor.py"),
                "--state-dir",
                str(state.path),
                "--cluster",
                cluster_name(file),
                "--composition",
                str(file),
                "--nodes",
                ",".join("{}:{}".format(n, r) for n, r in nodes),
                "--units",
                os.environ.get("FAKE_TESTBED_UNITS", ""),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while not state.api_socket.exists():
            if time.monotonic() > deadline:
                print("error: the fake supervisor did not start", file=sys.stderr)
                return 1
            time.sleep(0.02)
        print("cluster {} is up: {} nodes ready".format(cluster_name(file), len(nodes)))
        return 0
    if verb == "down":
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(state.api_socket))
                s.sendall(b'{"op":"down"}\n')
                s.recv(4096)
        except OSError:
            print("cluster {} is not running".format(cluster_name(file)), file=sys.stderr)
            return 0
        print("cluster {} is down".format(cluster_name(file)), file=sys.stderr)
        return 0
    if verb == "build":
        print("every image is in the store", file=sys.stderr)
        return 0
    print("fake testbed: unknown verb {}".format(verb), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
