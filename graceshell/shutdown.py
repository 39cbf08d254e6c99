"""Has a stop been asked for, and how long is left? For job code that wants
to checkpoint and stop in time.

    from graceshell import shutdown

    for chunk in chunks:
        if shutdown.requested():
            save_checkpoint(); raise Retry()
        process(chunk)

At its first stop signal graceshell writes $GRACESHELL_SHUTDOWN_FILE,
atomically, with {"signal", "received_at", "deadline", "platform_deadline"}
(wall-clock epoch seconds; `deadline` is when graceshell's final KILL fires).
Outside graceshell these return False and None. Checking costs one stat().
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from typing import Any

SHUTDOWN_FILE_ENV = "GRACESHELL_SHUTDOWN_FILE"
_notice: dict[str, Any] | None = None  # written once per stop, so it can be cached once read


def notice() -> dict[str, Any] | None:
    """The shutdown notice, or None before a stop (or outside graceshell)."""
    global _notice
    path = os.environ.get(SHUTDOWN_FILE_ENV)
    if _notice is not None and _notice.get("_path") == path:
        return _notice
    if not path:
        return None
    import json

    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    if isinstance(data, dict):
        _notice = {**data, "_path": path}
        return _notice
    return None


def requested() -> bool:
    """True once graceshell has received a stop signal."""
    path = os.environ.get(SHUTDOWN_FILE_ENV)
    return bool(path) and os.path.exists(path)  # type: ignore[arg-type]


def remaining() -> float | None:
    """Seconds until graceshell's final KILL, or None before a stop."""
    data = notice() if requested() else None
    if data is None or not isinstance(data.get("deadline"), (int, float)):
        return None
    return max(0.0, data["deadline"] - time.time())
