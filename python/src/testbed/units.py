"""The small value syntaxes of the API, the same as the Rhai driver's:
durations (``30``, ``0.5``, ``"500ms"``, ``"2s"``, ``"1m30s"``, or a
:class:`datetime.timedelta`), link rates (``"10mbit"``) and loss fractions
(``0.1`` or ``"10%"``).
"""

from __future__ import annotations

import datetime
import math
import re
from typing import Union

from .errors import ConfigError

#: What every timeout and duration argument accepts: seconds, a string
#: with units, or a timedelta.
Duration = Union[int, float, str, datetime.timedelta]

_UNITS = {"ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def _number(text: str) -> float:
    # float() also takes "1_000", which the Rust side refuses.
    if "_" in text:
        raise ValueError(text)
    return float(text)


def _seconds(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(value)
    return value


def parse_duration(text: str) -> float:
    """Seconds from a plain number (``"2"``, ``"0.5"``) or numbers with a
    unit, ``ms``, ``s``, ``m``/``min`` or ``h``, possibly several
    (``"1m30s"``)."""
    bad = ConfigError(
        'bad duration {!r}: use seconds or a number with ms, s, m or h, e.g. "500ms", "2s", "5m"'.format(
            text
        )
    )
    t = text.strip()
    if not t:
        raise bad
    try:
        return _seconds(_number(t))
    except ValueError:
        pass
    total = 0.0
    rest = t
    while rest:
        m = re.match(r"([0-9.]*)([^0-9.]*)", rest)
        assert m is not None  # the pattern matches any string
        number, unit = m.group(1), m.group(2)
        try:
            n = _number(number)
            factor = _UNITS[unit.strip()]
            total += _seconds(n * factor)
        except (ValueError, KeyError):
            raise bad from None
        rest = rest[m.end() :]
    return total


def seconds(value: Duration, what: str = "timeout") -> float:
    """A duration argument in seconds: a number of seconds, a string such
    as ``"500ms"``, or a :class:`datetime.timedelta`."""
    if isinstance(value, bool):
        raise ConfigError(
            '{} must be a number of seconds or a string like "2s", got {!r}'.format(
                what, value
            )
        )
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, (int, float)):
        try:
            return _seconds(float(value))
        except ValueError:
            raise ConfigError(
                "{} must be a non-negative number, got {}".format(what, value)
            ) from None
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ConfigError as e:
            raise ConfigError("{}: {}".format(what, e)) from None
    raise ConfigError(
        '{} must be a number of seconds or a string like "2s", got {}'.format(
            what, type(value).__name__
        )
    )


def parse_rate(value: Union[int, str]) -> int:
    """Bits per second from ``"10mbit"``, ``"512kbit"``, ``"1gbit"``,
    ``"800bit"`` or a number of bits per second; ``0`` removes the limit."""
    help_ = 'use a number with bit, kbit, mbit or gbit, e.g. "10mbit"'
    if isinstance(value, bool):
        raise ConfigError("rate must be bits per second or a string, got {!r}".format(value))
    if isinstance(value, int):
        if value < 0:
            raise ConfigError("rate must not be negative, got {}".format(value))
        return value
    if not isinstance(value, str):
        raise ConfigError(
            'rate must be bits per second or a string like "10mbit", got {}'.format(
                type(value).__name__
            )
        )
    t = value.strip()
    if t == "0":
        return 0
    m = re.match(r"([0-9.]*)(.*)$", t)
    assert m is not None
    try:
        n = _number(m.group(1))
    except ValueError:
        raise ConfigError('bad rate "{}": {}'.format(value, help_)) from None
    if not math.isfinite(n):
        raise ConfigError('bad rate "{}": {}'.format(value, help_))
    unit = m.group(2).strip().lower()
    factors = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
    if unit == "":
        raise ConfigError('rate "{}" has no unit: {}'.format(value, help_))
    if unit not in factors:
        if unit.endswith("bps") or unit.endswith("b"):
            raise ConfigError(
                'ambiguous rate unit in "{}" (bits or bytes?): {}'.format(value, help_)
            )
        raise ConfigError('bad rate unit in "{}": {}'.format(value, help_))
    bps = round(n * factors[unit])
    if not 1 <= bps <= 10**12:
        raise ConfigError(
            'rate "{}" is out of range: use between 1bit and 1000gbit'.format(value)
        )
    return int(bps)


def check_loss(value: float) -> float:
    """A loss fraction must be within 0..1."""
    if not 0.0 <= value <= 1.0:
        raise ConfigError("loss must be a fraction from 0 to 1, got {}".format(value))
    return value


def parse_loss(value: Union[int, float, str]) -> float:
    """A loss as a fraction (``0.1``) or a percentage (``"10%"``)."""
    if isinstance(value, bool):
        raise ConfigError("loss must be a fraction, got {!r}".format(value))
    if isinstance(value, (int, float)):
        return check_loss(float(value))
    if not isinstance(value, str):
        raise ConfigError(
            'loss must be a fraction or a string like "10%", got {}'.format(
                type(value).__name__
            )
        )
    t = value.strip()
    try:
        v = _number(t[:-1].strip()) / 100.0 if t.endswith("%") else _number(t)
    except ValueError:
        raise ConfigError(
            'bad loss {!r}: use a fraction from 0 to 1 or a percentage, e.g. 0.1 or "10%"'.format(
                value
            )
        ) from None
    return check_loss(v)
