"""Repeated log events, summarised: the first few of a kind are logged one by
one, the rest are counted and logged as one summary event per second.

A storm of signals (a script in a loop, a platform that repeats its stop
signal) must not flood the logs, and must not lose the record either: every
event is either logged or counted in a summary. A kind that has been quiet
for an interval starts again with events of its own.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger as Logger

BURST = 3  # events of one kind logged one by one before they are counted
INTERVAL = 1.0  # seconds: the most often a summary is logged, and the quiet time that resets a kind


class RepeatSummary:
    def __init__(self, log: Logger, event: str, *, burst: int = BURST, interval: float = INTERVAL) -> None:
        self.log = log
        self.event = event
        self.burst = burst
        self.interval = interval
        self.logged: dict[str, int] = {}  # per kind, events logged one by one since it was last quiet
        self.last_at: dict[str, float] = {}
        self.counts: dict[str, int] = {}  # per kind, events counted since the last summary
        self.flush_at: float | None = None  # when the loop must call flush: a deadline, not a poll

    def admit(self, now: float, kind: str) -> bool:
        """True: log this event yourself; False: it has been counted for the summary."""
        if now - self.last_at.get(kind, now - self.interval) >= self.interval:
            self.logged[kind] = 0  # quiet for a while: a new burst
        self.last_at[kind] = now
        if self.logged.get(kind, 0) < self.burst:
            self.logged[kind] = self.logged.get(kind, 0) + 1
            return True
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.flush_at is None:
            self.flush_at = now + self.interval  # counting began an interval before it
        return False

    def flush(self, now: float) -> None:
        """Log what was counted since the last summary (at flush_at, and at the end)."""
        if self.counts:
            since = self.flush_at - self.interval if self.flush_at is not None else now
            seconds = max(now - since, 1e-6)
            self.log.info(self.event, counts=dict(self.counts), seconds=round(seconds, 3),
                          per_second={kind: round(count / max(seconds, self.interval), 1)
                                      for kind, count in self.counts.items()})
        self.counts = {}
        self.flush_at = None

    def flush_due(self, now: float) -> None:
        if self.flush_at is not None and now >= self.flush_at:
            self.flush(now)
