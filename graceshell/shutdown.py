"""Has a stop been asked for, and how long is left? For job code that wants
to checkpoint and stop in time.

    from graceshell import shutdown

    for chunk in chunks:
        if shutdown.requested():
            save_checkpoint(); raise Retry()
        process(chunk)

At its first stop signal graceshell writes $GRACESHELL_SHUTDOWN_FILE,
atomically, with {"signal", "received_at", "deadline", "platform_deadline",
"step", "escalated_at"} (wall-clock epoch seconds; `deadline` is when
graceshell's final KILL fires). `step` is 0 during the warm phase; before
each later ladder step graceshell rewrites the file with the step's index
and `escalated_at`. Outside graceshell these return False and None.
Checking `requested()` costs one stat().
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from typing import Any

SHUTDOWN_FILE_ENV = "GRACESHELL_SHUTDOWN_FILE"
# graceshell writes about 200 bytes; anything much larger is not its notice.
MAX_NOTICE = 64 * 1024
# (path, notice) once graceshell has escalated: nothing later changes it.
_escalated_notice: tuple[str, dict[str, Any]] | None = None

if os.environ.get(SHUTDOWN_FILE_ENV):
    # A process graceshell started: the integrations read the notice inside
    # signal handlers, and a handler must never import. A TERM that arrived
    # while another handler was importing the reader found the module half
    # made (ImportError), and the Dramatiq worker process died with its
    # messages. graceshell's own process, before its spawn, pays nothing.
    import json  # noqa: F401 - the reader's parser, loaded here for the same reason

    from graceshell import jsonfile  # noqa: F401


def notice() -> dict[str, Any] | None:
    """The shutdown notice, or None before a stop (or outside graceshell).

    Never raises: a corrupt, huge, binary or symlinked file reads as None.
    """
    global _escalated_notice
    path = os.environ.get(SHUTDOWN_FILE_ENV)
    if _escalated_notice is not None and _escalated_notice[0] == path:
        return _escalated_notice[1]
    if not path:
        return None
    from graceshell.jsonfile import Unreadable, read_object

    try:
        data = read_object(path, MAX_NOTICE)
    except Unreadable:
        return None
    if _step(data):
        _escalated_notice = (path, data)
    return data


def _step(data: dict[str, Any]) -> float:
    """The notice's ladder step: 0 in the warm phase (or when the field makes no sense)."""
    from graceshell.jsonfile import finite_number

    return max(finite_number(data.get("step")) or 0.0, 0.0)


def requested() -> bool:
    """True once graceshell has received a stop signal."""
    path = os.environ.get(SHUTDOWN_FILE_ENV)
    return bool(path) and os.path.exists(path)  # type: ignore[arg-type]


def escalated() -> bool:
    """True once graceshell has gone past the warm phase (a cold step or the kill).

    Integrations use it to tell the platform's broadcast, to be ignored by
    the worker's children, from graceshell's own cold shutdown, to be obeyed.
    """
    data = notice() if requested() else None
    return bool(data and _step(data))


def under_graceshell() -> bool:
    """True when this process was started by graceshell."""
    return bool(os.environ.get(SHUTDOWN_FILE_ENV))


def remaining() -> float | None:
    """Seconds until graceshell's final KILL, or None before a stop."""
    from graceshell.jsonfile import finite_number

    data = notice() if requested() else None
    deadline = finite_number(data.get("deadline")) if data is not None else None
    if deadline is None:
        return None
    return max(0.0, deadline - time.time())
