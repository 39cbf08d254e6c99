"""Durations as users write them: `25`, `25s`, `1.5s`, `500ms`, `2m`, `1m30s`."""

from __future__ import annotations

import re

from graceshell.errors import shown

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?|\.[0-9]+)(ms|s|m|h)?")
# A week: longer than any platform's grace period, and short enough that a
# deadline stays an ordinary number for timers and selectors.
MAX_DURATION = 7 * 24 * 3600.0
_LONGEST_TEXT = 100


def parse_duration(text: str | int | float) -> float:
    """Seconds in `text`; raises ValueError with a message fit for the user."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise ValueError(f"invalid duration {shown(text)} (use e.g. 25s, 500ms, 2m)")
    if isinstance(text, (int, float)):
        if text != text:  # NaN
            raise ValueError("invalid duration: not a number (use e.g. 25s, 500ms, 2m)")
        if text < 0:
            raise ValueError(f"duration {shown(text)} is negative")
        return _bounded(float(text) if text <= MAX_DURATION else MAX_DURATION + 1, text)
    spec = text.strip().lower()
    if len(spec) > _LONGEST_TEXT:
        raise ValueError(f"invalid duration {shown(text)} (use e.g. 25s, 500ms, 2m, 1m30s)")
    pos, total, parts = 0, 0.0, 0
    while pos < len(spec):
        match = _PART.match(spec, pos)
        # A bare number is only allowed alone ("25"), not inside "1m30".
        if match is None or (match.group(2) is None and (parts or match.end() != len(spec))):
            raise ValueError(f"invalid duration {shown(text)} (use e.g. 25s, 500ms, 2m, 1m30s)")
        total += float(match.group(1)) * _UNITS[match.group(2) or "s"]
        pos, parts = match.end(), parts + 1
    if parts == 0:
        raise ValueError("empty duration (use e.g. 25s, 500ms, 2m)")
    return _bounded(total, text)


def _bounded(seconds: float, text: object) -> float:
    if not seconds <= MAX_DURATION:  # also infinity
        raise ValueError(f"duration {shown(text)} is longer than a week (at most 168h)")
    if 0 < seconds < 0.0005:  # would round to 0, which means something else (e.g. an immediate step)
        raise ValueError(f"duration {shown(text)} is under a millisecond (graceshell's finest step)")
    return to_ms(seconds)


def to_ms(seconds: float) -> float:
    """Seconds rounded to the millisecond: every duration graceshell computes
    or prints, so that 6s - 20% is 4.8, not 4.800000000000001, in the JSON
    that machines read. No timer of graceshell's is finer than that."""
    return round(seconds, 3)


def format_duration(seconds: float) -> str:
    """Shortest exact form for logs and `check`: 25s, 1.5s, 500ms."""
    if seconds != 0 and seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"
