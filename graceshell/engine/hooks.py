"""The `on_orphans` hook: a command run after a stop that orphaned jobs.

It gets the exit report (with `orphaned_jobs`) as JSON on stdin, and
$GRACESHELL_ORPHANED_JOBS with their number; job data is never formatted
into the command line. It runs in its own session, and it and everything
it started are killed when the time before the platform's deadline runs out.
"""

from __future__ import annotations

import os
import signal
import time

from graceshell.engine import tree
from graceshell.engine.report import shell_status

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from typing import Any

    from structlog.typing import FilteringBoundLogger as Logger


def run_on_orphans(command: str, report: dict[str, Any], timeout: float, log: Logger) -> dict[str, Any]:
    """Run the hook; returns and logs its outcome (ok, failed, killed, not started)."""
    import json
    import subprocess

    started = time.monotonic()
    orphaned = len(report.get("orphaned_jobs", ())) + report.get("orphaned_jobs_unread", 0)
    env = {**os.environ, "GRACESHELL_ORPHANED_JOBS": str(orphaned)}
    outcome: dict[str, Any] = {"command": command, "timeout_s": round(timeout, 3)}
    try:
        proc = subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE, env=env, start_new_session=True)
    except OSError as exc:
        outcome.update(outcome="not started", error=str(exc))
        log.error("graceshell.on_orphans", **outcome)
        return outcome
    try:
        proc.communicate(json.dumps(report, default=str).encode(), timeout=max(timeout, 0.0))
    except subprocess.TimeoutExpired:
        # The hook and all it started: its group, then anything that escaped it.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        tree.signal_descendants(signal.SIGKILL, until_gone=True)
        proc.wait()
        outcome.update(outcome="killed", exit_code=128 + signal.SIGKILL,
                       duration_s=round(time.monotonic() - started, 3))
        log.error("graceshell.on_orphans", **outcome)
        return outcome
    except BrokenPipeError:
        proc.wait()  # the hook did not read its stdin; its exit status still counts
    code = shell_status(proc.returncode)
    outcome.update(outcome="ok" if code == 0 else "failed", exit_code=code,
                   duration_s=round(time.monotonic() - started, 3))
    (log.info if code == 0 else log.error)("graceshell.on_orphans", **outcome)
    return outcome
