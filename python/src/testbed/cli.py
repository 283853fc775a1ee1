"""The ``testbed`` command line, which this package uses only to bring a
cluster up, take it down and build images: everything else goes through
the supervisor's API.

The binary is ``$TESTBED`` if set, else ``testbed`` on ``PATH``. Its output
(progress, the status table, a failing node's journal tail) is logged line
by line on the ``testbed.cli`` logger as it comes, and kept: a failure
raises :class:`~testbed.errors.CliError` with its last lines.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

from .errors import CliError, ConfigError
from .units import Duration, seconds

log = logging.getLogger("testbed.cli")

#: The variable naming the ``testbed`` binary.
BINARY_ENV = "TESTBED"

#: Backends ``testbed up`` knows.
BACKENDS = ("qemu", "podman", "docker", "libvirt")

#: Accelerators ``testbed up`` knows.
ACCELS = ("auto", "kvm", "tcg")

#: Role counts: ``{"compute": 8}`` or ``["compute=8"]``.
Scale = Union[Mapping[str, int], Iterable[str]]


def find_binary(binary: Optional[str] = None) -> str:
    """The ``testbed`` executable: ``binary``, else ``$TESTBED``, else
    ``testbed`` on ``PATH``."""
    candidate = binary or os.environ.get(BINARY_ENV)
    if candidate:
        if os.sep in candidate:
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
            raise CliError(
                "the testbed command {} is not an executable file (from {})".format(
                    candidate, "the argument" if binary else "$" + BINARY_ENV
                ),
                [candidate],
                None,
                "",
            )
        found = shutil.which(candidate)
        if found:
            return found
        raise CliError(
            "cannot find the testbed command {!r} on PATH".format(candidate), [candidate], None, ""
        )
    found = shutil.which("testbed")
    if found is None:
        raise CliError(
            "cannot find the testbed command: put it on PATH or set ${} to its path".format(
                BINARY_ENV
            ),
            ["testbed"],
            None,
            "",
        )
    return found


def scale_args(scale: Optional[Scale]) -> List[str]:
    """``--scale ROLE=N`` arguments from a mapping or ``ROLE=N`` strings."""
    if scale is None:
        return []
    items: List[str] = []
    if isinstance(scale, Mapping):
        for role, count in scale.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ConfigError(
                    "scale of role {}: the count must be a whole number, got {!r}".format(
                        role, count
                    )
                )
            items.append("{}={}".format(role, count))
    elif isinstance(scale, str):
        raise ConfigError(
            'scale is a mapping like {{"compute": 8}} or a list like ["compute=8"], got the string {!r}'.format(
                scale
            )
        )
    else:
        for item in scale:
            role, sep, count = str(item).partition("=")
            if not sep or not role.strip() or not count.strip().isdigit():
                raise ConfigError("scale {!r}: write ROLE=N, e.g. compute=8".format(item))
            items.append("{}={}".format(role.strip(), count.strip()))
    out: List[str] = []
    for item in items:
        out += ["--scale", item]
    return out


def up_args(
    path: str,
    scale: Optional[Scale] = None,
    backend: Optional[str] = None,
    accel: Optional[str] = None,
    cold: bool = False,
    from_snapshot: Optional[str] = None,
    keep_failed: bool = False,
    timeout: Optional[Duration] = None,
    offline: bool = False,
    vendor: Sequence[str] = (),
    connect: Optional[str] = None,
    hosts: Sequence[str] = (),
) -> List[str]:
    """The arguments of ``testbed up`` for these options."""
    args = ["up", path] + scale_args(scale)
    if backend is not None:
        if backend not in BACKENDS:
            raise ConfigError(
                "unknown backend {!r} (one of {})".format(backend, ", ".join(BACKENDS))
            )
        args += ["--backend", backend]
    if accel is not None:
        if accel not in ACCELS:
            raise ConfigError("unknown accelerator {!r} (one of {})".format(accel, ", ".join(ACCELS)))
        args += ["--accel", accel]
    if cold and from_snapshot is not None:
        raise ConfigError("cold and from_snapshot exclude each other: a cold up boots every node")
    if cold:
        args.append("--cold")
    if from_snapshot is not None:
        args += ["--from", from_snapshot]
    if keep_failed:
        args.append("--keep-failed")
    if timeout is not None:
        args += ["--timeout", "{}ms".format(int(round(seconds(timeout) * 1000)))]
    if offline:
        args.append("--offline")
    for folder in vendor:
        args += ["--vendor", os.fspath(folder)]
    if connect is not None:
        args += ["--connect", connect]
    for host in hosts:
        args += ["--host", host]
    return args


def run(
    args: Sequence[str],
    binary: Optional[str] = None,
    cwd: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
) -> str:
    """Runs ``testbed ARGS``; returns what it printed (stdout and stderr
    together). Each line is logged as it comes; a non-zero exit raises
    :class:`~testbed.errors.CliError` with the output's tail."""
    exe = find_binary(binary)
    argv = [exe] + list(args)
    shown = "testbed " + " ".join(args)
    log.info("$ %s", shown)
    full_env = dict(os.environ)
    full_env.setdefault("NO_COLOR", "1")
    if env:
        full_env.update(env)
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    except OSError as e:
        raise CliError("cannot run {}: {}".format(shown, e), argv, None, "") from None
    lines: List[str] = []
    assert proc.stdout is not None
    with proc.stdout:
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            lines.append(line)
            log.info("%s", line)
    code = proc.wait()
    output = "\n".join(lines) + ("\n" if lines else "")
    if code != 0:
        raise CliError("{} failed with exit status {}".format(shown, code), argv, code, output)
    return output
