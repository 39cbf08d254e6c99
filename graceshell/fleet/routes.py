"""The endpoint's four paths, answered from one reading of the supervisor.

- /livez: 200 while graceshell supervises, draining included. It is
  answered by the supervisor's own loop, so an answer proves the loop runs;
  a loop that hung would not answer and the probe would time out.
- /readyz: 200 while running; 503 from the first stop on, naming the phase.
- /busy: JSON: the jobs in flight (count, oldest start), the phase, the
  budget and the seconds left in it.
- /metrics: Prometheus text exposition (needs graceshell[metrics]).
"""

from __future__ import annotations

import json
import time

from graceshell.fleet.status import RUNNING

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from collections.abc import Callable

    from graceshell.fleet.http import Responder
    from graceshell.fleet.status import Status

TEXT = "text/plain; charset=utf-8"
PATHS = ("/livez", "/readyz", "/busy", "/metrics")


def busy_document(status: Status) -> dict[str, object]:
    oldest = status.oldest_job_started_at
    return {
        "jobs": status.jobs,
        "oldest_job_started_at": oldest,
        "oldest_job_running_s": round(max(0.0, time.time() - oldest), 3) if isinstance(oldest, float) else None,
        "phase": status.phase,
        "pid": status.pid,
        "budget_s": status.budget_s,
        "budget_left_s": status.budget_left_s,
        "stop_signal": status.stop_signal,
        "stop_cause": status.stop_cause,
        "interruption": status.interruption,
    }


def make_responder(read_status: Callable[[], Status], metrics: Callable[[Status], bytes] | None,
                   metrics_missing: str) -> Responder:
    """The endpoint's answer to a path. `metrics` renders the exposition, or
    is None, and `/metrics` then says why (`metrics_missing`)."""

    def respond(path: str) -> tuple[int, str, bytes]:
        if path not in PATHS:
            return 404, TEXT, f"not found; paths: {' '.join(PATHS)}\n".encode()
        status = read_status()
        if path == "/livez":
            return 200, TEXT, f"ok: supervising ({status.phase})\n".encode()
        if path == "/readyz":
            if status.phase == RUNNING:
                return 200, TEXT, b"ready: running\n"
            return 503, TEXT, f"not ready: {status.phase}\n".encode()
        if path == "/busy":
            return 200, "application/json", (json.dumps(busy_document(status)) + "\n").encode()
        if metrics is None:
            return 501, TEXT, (metrics_missing + "\n").encode()
        return 200, METRICS_CONTENT_TYPE, metrics(status)

    return respond


METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # prometheus_client's CONTENT_TYPE_LATEST
