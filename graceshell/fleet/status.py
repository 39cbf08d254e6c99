"""What the endpoint reports, read from the supervisor in one place.

The supervisor hands over a `Status` on each request: its phase and
counters as they are now. The jobs in flight come from the job ledger
through `JobSource` (count and oldest start), so how the supervisor watches
the ledger can change without touching the endpoint.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from typing import Protocol

    class JobSource(Protocol):
        def count(self) -> int: ...

        def oldest_start(self) -> float | None: ...

# The phases, in order. `running` is the only ready one.
RUNNING = "running"  # supervising, no stop yet
DRAINING = "draining"  # the stop has begun: the worker has its warm signal
ESCALATING = "escalating"  # a later ladder step has fired
KILLING = "killing"  # the whole tree has been SIGKILLed
EXITING = "exiting"  # the worker has exited; its leftovers are being cleaned up
PHASES = (RUNNING, DRAINING, ESCALATING, KILLING, EXITING)


class Status:
    """One reading of the supervisor's state (plain attributes, built per request)."""

    __slots__ = ("phase", "pid", "jobs", "oldest_job_started_at", "budget_s", "budget_left_s", "stop_signal",
                 "stop_cause", "stop_s", "steps_fired", "tree_kills", "killed_processes", "orphaned_jobs",
                 "restarts", "interruption", "name")

    def __init__(self, **values: object) -> None:
        for name in self.__slots__:
            setattr(self, name, values.get(name))
