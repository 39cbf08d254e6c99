"""The exit-status report: one `graceshell.exit` event that says how it ended.

outcome:
  clean      a stop was asked for and the worker ended within the first
             step: exit 0, or by the very signal it was sent
  escalated  a stop needed a later ladder step, but no SIGKILL
  killed     the final SIGKILL fired and took down at least one process
  exited     no stop was asked for; the worker ended on its own with 0
  crashed    the worker failed: non-zero or killed by a signal, without a
             stop request, or a stop whose first step it answered with an error
  not_started  the command could not be executed: 127 not found, 126 not
             executable (`error` says why)
"""

from __future__ import annotations

import os
import signal

from graceshell.config.ladder import describe
from graceshell.config.plan import RunPlan
from graceshell.signals import signal_name

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from typing import Any


def shell_status(code: int) -> int:
    """The shell's convention for a child's end as Python reports it (a
    returncode or waitstatus_to_exitcode, -N for death by signal N): 128+N."""
    return code if code >= 0 else 128 - code


def exit_code_of(status: int | None) -> int:
    """The exit status of a raw wait status; None is a survivor we had to SIGKILL."""
    if status is None:
        return 128 + signal.SIGKILL
    return shell_status(os.waitstatus_to_exitcode(status))


def outcome_of(status: int | None, stop_signal: int | None, first_signal: int | None,
               steps_fired: int, kill_fired: bool, killed: list[dict[str, Any]]) -> str:
    if kill_fired and any(entry.get("signal") == "KILL" for entry in killed):
        return "killed"
    code = exit_code_of(status)
    if stop_signal is None:
        return "exited" if code == 0 else "crashed"
    if steps_fired > 1:
        return "escalated"
    died_of_request = first_signal is not None and code == 128 + first_signal
    return "clean" if code == 0 or died_of_request else "crashed"


def build_report(*, plan: RunPlan, pid: int, status: int | None, stop_signal: int | None,
                 first_signal: int | None, steps_fired: int, kill_fired: bool,
                 killed: list[dict[str, Any]], survivors: list[dict[str, Any]], uptime_s: float,
                 shutdown_s: float | None, reaped_orphans: int,
                 orphaned_jobs: list[dict[str, Any]], orphaned_jobs_unread: int = 0) -> dict[str, Any]:
    code = exit_code_of(status)
    died_of = -os.waitstatus_to_exitcode(status) if status is not None and os.WIFSIGNALED(status) else None
    outcome = outcome_of(status, stop_signal, first_signal, steps_fired, kill_fired, killed)
    remapped = plan.clean_exit and outcome == "clean" and code != 0
    report: dict[str, Any] = {
        "outcome": outcome,
        "exit_code": 0 if remapped else code,
        "signal": signal_name(died_of) if died_of else None,
        "stop_signal": signal_name(stop_signal) if stop_signal is not None else None,
        "pid": pid,
        "uptime_s": round(uptime_s, 3),
        "shutdown_s": round(shutdown_s, 3) if shutdown_s is not None else None,
        "budget_s": plan.budget,
        "platform_timeout_s": plan.platform_timeout,
        "platform": plan.platform.name,
        "ladder": describe(plan.ladder, first_signal),
        "steps_fired": steps_fired,
        "killed": killed,
        "orphaned_jobs": orphaned_jobs,
        "reaped_orphans": reaped_orphans,
    }
    if remapped:  # --clean-exit: graceshell exits 0, and says what the worker's status was
        report["worker_exit_code"] = code
    if orphaned_jobs_unread:  # more ledger files than graceshell reads at exit (ledger.MAX_ORPHANS_READ)
        report["orphaned_jobs_unread"] = orphaned_jobs_unread
    if survivors:
        report["survivors"] = survivors
    return report


def not_started_report(plan: RunPlan, exit_code: int, error: str) -> dict[str, Any]:
    """The report of a command that could not be executed (126/127): the keys
    of every other report, so a log pipeline reads it the same way."""
    return {
        "outcome": "not_started",
        "exit_code": exit_code,
        "error": error,
        "signal": None,
        "stop_signal": None,
        "pid": None,
        "uptime_s": 0.0,
        "shutdown_s": None,
        "budget_s": plan.budget,
        "platform_timeout_s": plan.platform_timeout,
        "platform": plan.platform.name,
        "ladder": describe(plan.ladder),
        "steps_fired": 0,
        "killed": [],
        "orphaned_jobs": [],
        "reaped_orphans": 0,
    }
