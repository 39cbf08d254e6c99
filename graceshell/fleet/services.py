"""The fleet options of one run, as the supervisor's loop sees them: fds to
register, a deadline, and a few calls at the moments that matter.

Built after the worker has been spawned and the logger made; with every
option off the supervisor never imports this package.
"""

from __future__ import annotations

import os
import selectors

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from structlog.typing import FilteringBoundLogger

    from graceshell.config.plan import RunPlan
    from graceshell.fleet.http import Endpoint
    from graceshell.fleet.notices import Notice, Watcher
    from graceshell.fleet.status import Status

# Set by `graceshell start` on a process it restarted: how many times it has
# (graceshell.commands.start.RESTARTS_ENV; not imported: start's module is heavy).
RESTARTS_ENV = "GRACESHELL_RESTARTS"


def start_fleet(plan: RunPlan, log: FilteringBoundLogger, read_status: Callable[[], Status],
                on_notice: Callable[[Notice], None]) -> Fleet:
    """The fleet options of `plan`, started: the endpoint bound, the notices watched."""
    fleet = Fleet(log)
    text = os.environ.get(RESTARTS_ENV, "")
    fleet.restarts = int(text) if text.isascii() and text.isdigit() and len(text) < 10 else 0
    if plan.http is not None:
        fleet.serve(plan.http, fleet.reader(read_status))
    if plan.interruption_notices is not None:
        fleet.watch(plan.interruption_notices, plan.metadata_url, on_notice)
    return fleet


class Fleet:
    def __init__(self, log: FilteringBoundLogger) -> None:
        self.log = log
        self.endpoint: Endpoint | None = None
        self.restarts = 0
        self.watcher: Watcher | None = None
        self.on_notice: Callable[[Notice], None] | None = None

    def reader(self, read_status: Callable[[], Status]) -> Callable[[], Status]:
        """The supervisor's status, with what the fleet itself knows added."""
        def read() -> Status:
            status = read_status()
            status.restarts = self.restarts
            return status
        return read

    def serve(self, address: tuple[str, int], read_status: Callable[[], Status]) -> None:
        """Bind the endpoint; a failure is logged and the run goes on (the worker matters more)."""
        from graceshell.fleet.options import format_address
        from graceshell.fleet.http import Endpoint
        from graceshell.fleet.metrics import MISSING, renderer
        from graceshell.fleet.routes import make_responder

        render = renderer()
        try:
            self.endpoint = Endpoint(address, make_responder(read_status, render, MISSING))
        except OSError as exc:
            self.log.error("graceshell.http_failed", address=format_address(address),
                           error=exc.strerror or str(exc))
            return
        self.log.info("graceshell.http", address=format_address(self.endpoint.address),
                      metrics=render is not None, **({} if render is not None else {"note": MISSING}))

    def watch(self, choice: str, base: str | None, on_notice: Callable[[Notice], None]) -> None:
        """Read the cloud's interruption notices in a thread of their own (see notices)."""
        from graceshell.fleet.notices import Watcher

        self.on_notice = on_notice
        self.watcher = Watcher(choice, base)
        self.watcher.start()

    def register(self, selector: selectors.BaseSelector) -> None:
        if self.endpoint is not None:
            self.endpoint.register(selector)
        if self.watcher is not None:
            selector.register(self.watcher.read_fd, selectors.EVENT_READ, self._on_watcher)

    def _on_watcher(self, events: int) -> None:
        assert self.watcher is not None
        self._act_on(self.watcher.take())

    def _act_on(self, found: list[tuple[str, Any]]) -> None:
        assert self.watcher is not None and self.on_notice is not None
        for kind, item in found:
            if kind == "notice":
                self.on_notice(item)
            elif kind == "start":
                self.log.info("graceshell.interruption_watch", provider=item, metadata_url=self.watcher.base)
            elif kind == "acknowledged":
                self.log.info("graceshell.interruption_acknowledged", provider="azure", event_id=item)
            else:  # the worker runs on: a notice that cannot be read is one graceshell does without
                self.log.warning("graceshell.interruption_problem", provider=self.watcher.choice, problem=item)

    def worker_down(self) -> None:
        if self.watcher is not None:
            self.watcher.on_worker_down()

    def deadline(self) -> float | None:
        return self.endpoint.deadline() if self.endpoint is not None else None

    def dispatch(self, ready: list[tuple[Callable[[int], None], int]], now: float) -> None:
        """Serve the fleet's fds the loop found ready, then close what is past its deadline.

        A bug in the endpoint is logged and ends the endpoint, never the
        supervision (the loop's internal-error path would kill the worker's
        tree). A notice goes on to the supervisor as it is.
        """
        for callback, events in ready:
            if callback == self._on_watcher:
                callback(events)
                continue
            try:
                callback(events)
            except Exception as exc:  # noqa: BLE001 - see above
                self._endpoint_failed(exc)
        if self.endpoint is not None:
            try:
                self.endpoint.expire(now)
            except Exception as exc:  # noqa: BLE001 - see above
                self._endpoint_failed(exc)

    def _endpoint_failed(self, exc: Exception) -> None:
        if self.endpoint is None:
            return
        self.log.error("graceshell.http_failed", error=repr(exc)[:300], action="closed; supervision goes on")
        try:
            self.endpoint.close()
        finally:
            self.endpoint = None

    def close(self) -> None:
        if self.watcher is not None:
            self._act_on(self.watcher.close())  # a late notice changes nothing now; an acknowledgement is logged
            self.watcher = None
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None
