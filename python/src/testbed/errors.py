"""The exceptions of the testbed client.

Every error the library raises is a :class:`TestbedError`. Messages follow
the Rust code's style: lowercase, no trailing period, naming the node, the
command or the file concerned. An error about a command carries the node,
the command, how it ended and its output, and ``str()`` shows them all
(the output's last 40 lines), so a failing pytest test says what ran where
and what it printed.
"""

from __future__ import annotations

from typing import List, Optional

#: How many lines of a command's output an error message shows.
TAIL_LINES = 40


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of ``text``, saying how many were cut."""
    all_lines = text.splitlines()
    if len(all_lines) <= lines:
        return text
    cut = len(all_lines) - lines
    return "[... {} lines cut]\n{}".format(cut, "\n".join(all_lines[-lines:]))


class TestbedError(Exception):
    """Base class of every error of this package."""

    # pytest would otherwise try to collect this class from a test module
    # that imports it (its name starts with "Test").
    __test__ = False


class ConfigError(TestbedError, ValueError):
    """Bad input to the library: a timeout that is no duration, a bad
    ``TESTBED_TIMEOUT_FACTOR``, a composition that cannot be found."""


class UnsafeStateDir(TestbedError):
    """A state directory (or its root) someone else could control: refused,
    as the CLI refuses it."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            "refusing the state directory {}: {}; remove it, or set TESTBED_STATE_DIR to a folder of your own that only you may write".format(
                path, reason
            )
        )


class NotRunning(TestbedError):
    """No supervisor answers at the cluster's API socket."""

    def __init__(self, socket: str, cluster: Optional[str] = None) -> None:
        self.socket = socket
        self.cluster = cluster
        who = "cluster {}".format(cluster) if cluster else "the cluster"
        super().__init__(
            "{} is not running (no supervisor answers at {})".format(who, socket)
        )


class ProtocolError(TestbedError):
    """The supervisor sent something this client cannot read, a reply that
    does not belong to the request, or hung up in the middle of one."""


class SupervisorTimeout(TestbedError, TimeoutError):
    """The supervisor did not answer within the time this client allowed
    (the request's own timeout plus a margin)."""

    def __init__(self, request: str, timeout: float, socket: str) -> None:
        self.request = request
        self.timeout = timeout
        self.socket = socket
        super().__init__(
            "the supervisor did not answer the {} request within {} ({})".format(
                request, format_seconds(timeout), socket
            )
        )


class SupervisorError(TestbedError):
    """The supervisor answered with an error: an unknown node, a node that
    is not running, a failed unit, an agent error...

    ``node`` is the node the error is about, when there is one;
    ``unsupported`` is true when the backend cannot do this at all (as
    opposed to: it failed this time).
    """

    def __init__(
        self, message: str, node: Optional[str] = None, unsupported: bool = False
    ) -> None:
        self.message = message
        self.node = node
        self.unsupported = unsupported
        super().__init__(message)


class Unsupported(SupervisorError):
    """The backend cannot do this at all (``pause`` on a backend whose nodes
    cannot be frozen, say)."""


class CommandError(TestbedError):
    """A command on a node ended in a way the call did not accept.

    Attributes: ``node``, ``command``, ``status`` (the exit code; 128 + N
    when killed by signal N, 124 when killed after its timeout), ``stdout``,
    ``stderr`` and ``timed_out``.
    """

    def __init__(
        self,
        what: str,
        node: str,
        command: str,
        status: int,
        stdout: str,
        stderr: str,
        timed_out: bool = False,
        described_status: Optional[str] = None,
    ) -> None:
        self.what = what
        self.node = node
        self.command = command
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
        self.timed_out = timed_out
        self.described_status = described_status or describe_exit(
            status if status >= 0 else None, None, timed_out
        )
        super().__init__(self._message())

    def _message(self) -> str:
        return "{}: {}\n{}".format(
            self.what,
            self.described_status,
            describe_streams(self.stdout, self.stderr),
        )


class CommandFailed(CommandError):
    """``succeed`` ran a command that failed, or ``fail`` one that
    succeeded (or could not run, or was killed after its timeout)."""


class WaitTimeout(CommandError, TimeoutError):
    """``wait_until_succeeds`` / ``wait_until_fails`` ran out of time; the
    status and output are those of the last attempt."""


class WaitFailed(TestbedError):
    """``wait_for_unit``, ``wait_for_open_port`` or ``wait_for_file`` did
    not see what it waited for: the unit failed (the message holds its
    journal tail) or the time ran out."""

    def __init__(self, message: str, node: str, what: str) -> None:
        self.node = node
        self.what = what
        super().__init__(message)


class NodeNotReady(TestbedError):
    """A node that was started or rebooted did not become ready: it failed,
    stopped, is paused, or the time ran out. ``console_log`` is the host
    path of its serial console log, when known."""

    def __init__(
        self,
        message: str,
        node: str,
        state: Optional[str] = None,
        console_log: Optional[str] = None,
    ) -> None:
        self.node = node
        self.state = state
        self.console_log = console_log
        super().__init__(message)


class CliError(TestbedError):
    """The ``testbed`` command line (used for up, down and build) failed
    or could not be run. ``output`` is what it printed (its last lines are
    in the message)."""

    def __init__(
        self, message: str, argv: List[str], returncode: Optional[int], output: str
    ) -> None:
        self.argv = argv
        self.returncode = returncode
        self.output = output
        text = message
        if output.strip():
            text += "\n" + tail(output.rstrip("\n"))
        super().__init__(text)


def describe_exit(
    code: Optional[int], signal: Optional[int], timed_out: bool = False
) -> str:
    """How a command ended, as ``testbed`` says it."""
    if timed_out:
        return "killed after its timeout"
    if code is not None:
        return "exit status {}".format(code)
    if signal is not None:
        return "killed by signal {}".format(signal)
    return "unknown exit status"


def describe_streams(stdout: str, stderr: str) -> str:
    """stdout and stderr for a failure message: each one's last 40 lines,
    or ``(empty)``."""
    parts = []
    for name, text in (("stdout", stdout), ("stderr", stderr)):
        text = text.rstrip()
        if text:
            parts.append("{}:\n{}".format(name, tail(text)))
        else:
            parts.append("{}: (empty)".format(name))
    return "\n".join(parts)


def format_seconds(seconds: float) -> str:
    """A duration the way people write it: ``250ms``, ``2s``, ``1.5s``,
    ``5m``, ``1h30m`` (the Rust driver's ``format_duration``)."""
    ms = int(seconds * 1000)
    if ms < 1000:
        return "{}ms".format(ms)
    secs = int(seconds)
    if secs < 60 or (secs % 60 != 0 and secs < 600):
        text = "{:.1f}".format(seconds)
        if text.endswith(".0"):
            text = text[:-2]
        return text + "s"
    h, m, s = secs // 3600, (secs % 3600) // 60, secs % 60
    out = ""
    if h:
        out += "{}h".format(h)
    if m:
        out += "{}m".format(m)
    if s:
        out += "{}s".format(s)
    return out
