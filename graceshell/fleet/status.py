"""What the endpoint reports, read from the supervisor in one place.

The supervisor hands over a `Status` on each request: its phase and
counters as they are now; the jobs in flight come from the job ledger.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from typing import Any

# The phases, in order. `running` is the only ready one.
RUNNING = "running"  # supervising, no stop yet
DRAINING = "draining"  # the stop has begun: the worker has its warm signal
ESCALATING = "escalating"  # a later ladder step has fired
KILLING = "killing"  # the whole tree has been SIGKILLed
EXITING = "exiting"  # the worker has exited; its leftovers are being cleaned up
PHASES = (RUNNING, DRAINING, ESCALATING, KILLING, EXITING)


class Status:
    """One reading of the supervisor's state (plain attributes, built per request)."""

    __slots__ = ("phase", "pid", "name", "jobs", "oldest_job_started_at", "budget_s", "budget_left_s",
                 "stop_signal", "stop_cause", "stop_s", "steps_fired", "tree_kills", "killed_processes",
                 "orphaned_jobs", "restarts", "interruption")

    def __init__(self, *, phase: str, pid: int, name: str, jobs: int, oldest_job_started_at: float | None,
                 budget_s: float, budget_left_s: float, stop_signal: str | None, stop_cause: str | None,
                 stop_s: float | None, steps_fired: int, tree_kills: int, killed_processes: int,
                 orphaned_jobs: int, restarts: int, interruption: dict[str, Any] | None) -> None:
        self.phase = phase
        self.pid = pid
        self.name = name
        self.jobs = jobs  # in the ledger now
        self.oldest_job_started_at = oldest_job_started_at  # epoch seconds
        self.budget_s = budget_s  # stop to final KILL
        self.budget_left_s = budget_left_s  # all of it before a stop
        self.stop_signal = stop_signal  # `TERM`; None before a stop
        self.stop_cause = stop_cause  # `signal` or `interruption:aws`
        self.stop_s = stop_s  # stop to the worker's exit (so far)
        self.steps_fired = steps_fired
        self.tree_kills = tree_kills
        self.killed_processes = killed_processes
        self.orphaned_jobs = orphaned_jobs  # ledger entries left once the worker exited
        self.restarts = restarts  # by `graceshell start`
        self.interruption = interruption  # {"provider", "deadline"} of the notice that began the stop
