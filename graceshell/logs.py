"""Structured log events through structlog: a stable event name plus keys.

Every event carries `event`, `level` and an ISO 8601 UTC `timestamp`
(structlog's own processors), and is rendered by structlog's JSONRenderer,
LogfmtRenderer or ConsoleRenderer. Logs go to stderr so the worker keeps
stdout to itself.

structlog costs tens of milliseconds to import (it pulls in asyncio, logging
and inspect), so nothing here imports it at module level: the supervisor
spawns the worker first and builds its logger afterwards, and the constants
below are all that the settings layer needs on the way there.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from collections.abc import MutableMapping
    from typing import Any, TextIO

    from structlog.typing import FilteringBoundLogger

FORMATS = ("auto", "json", "logfmt", "console")
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
LOG_FORMAT_ENV = "GRACESHELL_LOG_FORMAT"
LOG_LEVEL_ENV = "GRACESHELL_LOG_LEVEL"


class StreamSink:
    """The end of structlog's chain: one write and one flush per line.

    A closed or broken stderr must never take the supervisor down, so
    write errors are dropped here rather than raised into the loop. So is a
    line an integration logs from a signal handler that interrupted another
    line's write in the same thread (RuntimeError: reentrant call): a lost
    line, not a worker that dies in its shutdown.
    """

    __slots__ = ("stream",)

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def msg(self, message: str) -> None:
        try:
            self.stream.write(message + "\n")
            self.stream.flush()
        except (OSError, ValueError, RuntimeError):
            pass

    debug = info = warning = warn = error = critical = exception = fatal = failure = err = log = msg


# Keys the logger writes or binds itself, or that structlog's renderers take
# for a traceback: data logged as keys (a job's own fields) is renamed off them.
RESERVED_KEYS = frozenset({"self", "event", "level", "timestamp", "process", "component",
                           "exc_info", "exception", "stack_info"})


def _event_first(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """`event` leads the line, then the bound context and the fields: the
    key order graceshell has always written, which people read by eye."""
    return {"event": event_dict.pop("event"), **event_dict}


def _nested_as_json(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """logfmt and console values are flat: lists and dicts become compact JSON,
    which a logfmt parser keeps as one value and a person can still read."""
    import json

    for key, value in event_dict.items():
        if isinstance(value, (list, tuple, dict)):
            event_dict[key] = json.dumps(value, separators=(",", ":"), default=str)
    return event_dict


def use_colour(stream: TextIO) -> bool:
    """Colour on a terminal, unless NO_COLOR (no-color.org) says otherwise."""
    return _isatty(stream) and "NO_COLOR" not in os.environ


def resolve_format(fmt: str, stream: TextIO) -> str:
    """`auto` is console on a terminal, JSON everywhere else."""
    return ("console" if _isatty(stream) else "json") if fmt == "auto" else fmt


def make_logger(fmt: str = "auto", level: str = "info", stream: TextIO | None = None,
                **context: Any) -> FilteringBoundLogger:
    """A structlog logger for `fmt` and `level`, bound to `context`.

    Built with `structlog.wrap_logger` rather than the global
    `structlog.configure`: the integrations run inside the user's worker,
    whose own structlog configuration is not graceshell's to change.
    """
    import structlog

    stream = stream if stream is not None else sys.stderr
    fmt = resolve_format(fmt, stream)
    processors: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        _event_first,
    ]
    if fmt == "json":
        processors.append(structlog.processors.JSONRenderer(default=str))
    elif fmt == "logfmt":
        processors += [_nested_as_json, structlog.processors.LogfmtRenderer(bool_as_flag=False)]
    else:
        processors += [_nested_as_json,
                       structlog.dev.ConsoleRenderer(colors=use_colour(stream), pad_event_to=20, sort_keys=False)]
    logger = structlog.wrap_logger(StreamSink(stream), processors=processors,
                                   wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
                                   context_class=dict, cache_logger_on_first_use=True)
    return logger.bind(**context)


_integration_loggers: dict[str, FilteringBoundLogger] = {}


def logger_from_environment(component: str) -> FilteringBoundLogger:
    """The logger of an integration inside the worker: graceshell's format and
    level, which graceshell passes down in the environment, on stderr. Built
    on first use (the integrations log rarely: a stop, a requeue) and kept."""
    logger = _integration_loggers.get(component)
    if logger is None:
        fmt = os.environ.get(LOG_FORMAT_ENV, "auto")
        level = os.environ.get(LOG_LEVEL_ENV, "info")
        logger = _integration_loggers[component] = make_logger(
            fmt if fmt in FORMATS else "auto", level if level in LEVELS else "info", component=component)
    return logger


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError):
        return False
