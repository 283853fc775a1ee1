"""Time limits of node calls, and the factor that stretches them on slow
machines: the same rules and numbers as the Rhai driver
(``crates/driver/src/timeouts.rs``).

Every timeout a call uses, its default or the one given, is multiplied by
the timeout factor: 1 with KVM and on containers, 5 under TCG (software
emulation runs guests several times slower), or ``$TESTBED_TIMEOUT_FACTOR``.
So a test tuned on a KVM machine keeps passing under emulation. Sleeps are
not stretched.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Mapping, Optional

from .errors import ConfigError

#: The variable that overrides the factor.
FACTOR_ENV = "TESTBED_TIMEOUT_FACTOR"

#: The factor under TCG.
TCG_FACTOR = 5.0


def timeout_factor(accel: str, env: Optional[str] = None) -> float:
    """The timeout factor for a cluster running with ``accel`` (``kvm``,
    ``tcg``, or ``none`` for containers), unless ``env`` (the value of
    ``TESTBED_TIMEOUT_FACTOR``) sets one."""
    text = (env or "").strip()
    if text:
        try:
            if "_" in text:
                raise ValueError(text)
            factor = float(text)
        except ValueError:
            factor = math.nan
        if math.isfinite(factor) and 0.0 < factor <= 1000.0:
            return factor
        raise ConfigError(
            "{} must be a number above 0 and at most 1000, got {!r}".format(
                FACTOR_ENV, text
            )
        )
    # Emulation is what is slow; KVM and containers ("none") run natively.
    return TCG_FACTOR if accel == "tcg" else 1.0


def factor_from_environment(
    accel: str, environ: Optional[Mapping[str, str]] = None
) -> float:
    """:func:`timeout_factor` with the variable read from ``environ``
    (default: the process environment)."""
    environ = os.environ if environ is None else environ
    return timeout_factor(accel, environ.get(FACTOR_ENV))


@dataclass(frozen=True)
class Timeouts:
    """The default time limits, in seconds, before the factor, and the
    factor. The reply margins are this client's own: how much longer than
    a request's timeout it waits for the supervisor's answer (the Rust
    driver's ``REPLY_MARGIN`` and ``SHORT_REPLY``)."""

    #: ``succeed``, ``fail``, ``execute``: how long one command may run.
    command: float = 300.0
    #: ``wait_until_*``, ``wait_for_*``.
    wait: float = 300.0
    #: How often ``wait_until_*`` retries.
    retry_interval: float = 1.0
    #: How often node states are polled while nodes boot.
    poll_interval: float = 0.5
    #: Commands the artifact collector runs (journals).
    artifact_command: float = 30.0
    #: Extra time the supervisor may take beyond a request's own timeout.
    reply_margin: float = 60.0
    #: A reply to a short request (status, faults, files).
    short_reply: float = 120.0
    #: The multiplier applied to every timeout.
    factor: float = 1.0

    def scale(self, seconds: float) -> float:
        """``seconds`` multiplied by the factor."""
        return seconds * self.factor

    def with_factor(self, factor: float) -> "Timeouts":
        return replace(self, factor=factor)

    def describe(self, seconds: float) -> str:
        """A timeout for messages: ``5m``, or ``5m (timeout factor 5)``."""
        from .errors import format_seconds

        if self.factor == 1.0:
            return format_seconds(seconds)
        return "{} (timeout factor {:g})".format(format_seconds(seconds), self.factor)
