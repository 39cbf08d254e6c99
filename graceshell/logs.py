"""Structured log events: a stable event name plus key/value pairs.

The event model and output are structlog's (`event`, `level`, `timestamp`
keys; JSON, logfmt or a coloured console line), rendered here directly:
importing structlog pulls in asyncio, logging and inspect, which costs more
than the whole of `graceshell run -- true` is allowed to take. Logs go to
stderr so the worker keeps stdout to itself.
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from typing import Any, TextIO

FORMATS = ("auto", "json", "logfmt", "console")
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}

_COLOURS = {"debug": "\033[2m", "info": "\033[32m", "warning": "\033[33m", "error": "\033[31;1m"}
_RESET, _DIM, _BOLD, _CYAN, _MAGENTA = "\033[0m", "\033[2m", "\033[1m", "\033[36m", "\033[35m"


def _timestamp(now: float) -> str:
    """ISO 8601 UTC with microseconds, like structlog's TimeStamper(fmt="iso")."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def _logfmt_value(value: Any) -> str:
    if value is None:
        return ""
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if not isinstance(value, str):
        import json

        value = json.dumps(value, separators=(",", ":"), default=str)
    if value == "" or any(c in value for c in ' ="\\\n\t'):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return value


def _console_value(value: Any) -> str:
    """Like logfmt, but nested data is shown as plain JSON, for people."""
    if isinstance(value, (list, dict)):
        import json

        return json.dumps(value, separators=(",", ":"), default=str)
    return _logfmt_value(value)


def render_json(record: dict[str, Any]) -> str:
    import json

    return json.dumps(record, default=str)


def render_logfmt(record: dict[str, Any]) -> str:
    return " ".join(f"{key}={_logfmt_value(value)}" for key, value in record.items())


def render_console(record: dict[str, Any], colour: bool) -> str:
    fields = dict(record)
    event, level, stamp = fields.pop("event"), fields.pop("level"), fields.pop("timestamp")
    stamp = stamp.replace("T", " ")[:23]
    pairs = " ".join(f"{key}={_console_value(value)}" for key, value in fields.items())
    if not colour:
        return f"{stamp} [{level:<7}] {event:<20} {pairs}".rstrip()
    pairs = " ".join(
        f"{_CYAN}{key}{_RESET}={_MAGENTA}{_console_value(value)}{_RESET}" for key, value in fields.items()
    )
    return (f"{_DIM}{stamp}{_RESET} [{_COLOURS[level]}{level:<7}{_RESET}] "
            f"{_BOLD}{event:<20}{_RESET} {pairs}").rstrip()


class Logger:
    """A bound logger: `log.info("graceshell.start", pid=41)`."""

    def __init__(self, fmt: str = "auto", level: str = "info", stream: TextIO | None = None,
                 context: dict[str, Any] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        tty = _isatty(self.stream)
        self.format = ("console" if tty else "json") if fmt == "auto" else fmt
        self.colour = tty and self.format == "console" and "NO_COLOR" not in os.environ
        self.threshold = LEVELS[level]
        self.context = context or {}

    def bind(self, **context: Any) -> "Logger":
        bound = Logger.__new__(Logger)
        bound.__dict__.update(self.__dict__)
        bound.context = {**self.context, **context}
        return bound

    def log(self, level: str, event: str, **fields: Any) -> None:
        if LEVELS[level] < self.threshold:
            return
        record = {"event": event, **self.context, **fields, "level": level,
                  "timestamp": _timestamp(time.time())}
        if self.format == "json":
            line = render_json(record)
        elif self.format == "logfmt":
            line = render_logfmt(record)
        else:
            line = render_console(record, self.colour)
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stderr must never take the supervisor down

    def debug(self, event: str, **fields: Any) -> None:
        self.log("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self.log("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.log("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.log("error", event, **fields)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError):
        return False
