"""Whether the worker has jobs in flight: `graceshell.busy` for autoscalers
that read logs, from an inotify watch on the job ledger.

A worker draining a thousand short jobs a second changes the ledger four
thousand times a second (each job's file is written, renamed into place and
removed). Waking for each change cost graceshell a tenth of a core, taken
from the worker on a small machine. So after a wake the watch leaves the
selector, and the ledger is looked at again at most every LOOK_INTERVAL
while it keeps changing: a few wakes a second under load, none at all when
no job starts or ends (the watch goes back into the selector once a look
finds it quiet, so the next job wakes graceshell at once).
"""

from __future__ import annotations

import selectors

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from graceshell.engine.ledger import Ledger

BUSY_INTERVAL = 1.0  # seconds: the most often graceshell.busy is logged
# How long the ledger must stay empty and still before the worker is reported
# idle: the gap between one job and the next is no reason for an autoscaler to act.
IDLE_SETTLE = 0.5
# While the ledger keeps changing, how often graceshell looks at it (and the
# most a busy report can lag the start of a job, on top of BUSY_INTERVAL).
LOOK_INTERVAL = 0.25


class BusyWatch:
    """The busy state as last reported, and when to look at the ledger next."""

    def __init__(self, ledger: Ledger, log: FilteringBoundLogger) -> None:
        self.ledger = ledger
        self.log = log
        self.fd: int | None = None
        self.selector: selectors.BaseSelector | None = None
        self.reported = False
        self.reported_at = -BUSY_INTERVAL
        self.idle_since: float | None = None  # the ledger empty and still since then
        self.check_at: float | None = None  # a settle or the rate limit ends: look again then
        self.look_at: float | None = None  # the watch is out of the selector until then

    def start(self, selector: selectors.BaseSelector, now: float) -> int | None:
        """Watch the ledger from `selector`; returns the watch fd (None without inotify)."""
        self.fd = self.ledger.watch()
        if self.fd is None:
            return None
        self.selector = selector
        selector.register(self.fd, selectors.EVENT_READ)
        self.look(now, changed=False)  # a job may have started while the watch was being set up
        return self.fd

    @property
    def listening(self) -> bool:
        """The watch fd is in the selector: between looks it is out (look_at says until when)."""
        return self.fd is not None and self.look_at is None

    def due(self) -> float | None:
        """The next moment the busy state needs graceshell without a wake."""
        times = [t for t in (self.check_at, self.look_at) if t is not None]
        return min(times) if times else None

    def on_readable(self, now: float) -> None:
        """The ledger changed: look now, then not again before LOOK_INTERVAL."""
        if not self.ledger.drain_watch():
            return  # a job's file being written (a dot-file): its rename follows
        assert self.selector is not None and self.fd is not None
        self.selector.unregister(self.fd)
        self.look_at = now + LOOK_INTERVAL
        self.look(now, changed=True)

    def on_due(self, now: float) -> None:
        """Whatever of the busy state is due at `now` (nothing, most turns of the loop)."""
        if self.look_at is not None and now >= self.look_at:
            changed = self.ledger.drain_watch()
            if changed:  # still changing: the next look in LOOK_INTERVAL
                self.look_at = now + LOOK_INTERVAL
            else:  # quiet: the next change wakes graceshell at once
                assert self.selector is not None and self.fd is not None
                self.selector.register(self.fd, selectors.EVENT_READ)
                self.look_at = None
            self.look(now, changed)
        elif self.check_at is not None and now >= self.check_at:
            self.look(now, changed=False)

    def look(self, now: float, changed: bool) -> None:
        """Log `graceshell.busy` when jobs in flight go between 0 and more, at most once a second.

        Becoming busy is reported at once (an autoscaler must not scale a busy
        worker down), and so is a ledger that changed since the last look
        (jobs came and went between two looks); becoming idle only once the
        ledger has stayed empty and still for IDLE_SETTLE, so the moment
        between two jobs is not reported.
        """
        self.check_at = None
        count = self.ledger.count()
        if count:
            self.idle_since = None
        elif changed or self.idle_since is None:
            self.idle_since = now  # it may have emptied just now
        busy = count > 0 or (changed and not self.reported)  # a job came and went between two looks
        if busy == self.reported:
            return
        if not busy and now - self.idle_since < IDLE_SETTLE:  # type: ignore[operator]
            self.check_at = self.idle_since + IDLE_SETTLE  # type: ignore[operator]
            return
        if now - self.reported_at < BUSY_INTERVAL:
            self.check_at = self.reported_at + BUSY_INTERVAL  # look again then
            return
        self.reported, self.reported_at = busy, now
        self.log.info("graceshell.busy", busy=busy, jobs=count)
