"""The fleet options of one run, as the supervisor's loop sees them: fds to
register, a deadline, and a few calls at the moments that matter.

Built after the worker has been spawned and the logger made; with every
option off the supervisor never imports this package.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    import selectors
    from collections.abc import Callable

    from structlog.typing import FilteringBoundLogger

    from graceshell.config.plan import RunPlan
    from graceshell.fleet.http import Endpoint
    from graceshell.fleet.status import Status

# Set by `graceshell start` on a process it restarted: how many times it has
# (graceshell.commands.start.RESTARTS_ENV; not imported: start's module is heavy).
RESTARTS_ENV = "GRACESHELL_RESTARTS"


def start_fleet(plan: RunPlan, log: FilteringBoundLogger, read_status: Callable[[], Status]) -> Fleet:
    """The fleet options of `plan`, started: the endpoint bound."""
    fleet = Fleet(log)
    text = os.environ.get(RESTARTS_ENV, "")
    fleet.restarts = int(text) if text.isascii() and text.isdigit() and len(text) < 10 else 0
    if plan.http is not None:
        fleet.serve(plan.http, fleet.reader(read_status))
    return fleet


class Fleet:
    def __init__(self, log: FilteringBoundLogger) -> None:
        self.log = log
        self.endpoint: Endpoint | None = None
        self.restarts = 0

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

    def register(self, selector: selectors.BaseSelector) -> None:
        if self.endpoint is not None:
            self.endpoint.register(selector)

    def deadline(self) -> float | None:
        return self.endpoint.deadline() if self.endpoint is not None else None

    def on_time(self, now: float) -> None:
        if self.endpoint is not None:
            self.endpoint.expire(now)

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None
