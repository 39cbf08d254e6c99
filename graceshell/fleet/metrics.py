"""/metrics: graceshell's counters and gauges in Prometheus text exposition,
rendered by prometheus_client (the optional extra graceshell[metrics]).

The values live in the supervisor; a collector reads one Status per scrape,
so nothing is kept twice and nothing is updated when nobody scrapes.
prometheus_client is imported when the endpoint starts (after the worker's
spawn), never at a scrape: a first scrape during a stop costs no import.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

    from graceshell.fleet.status import Status

MISSING = "metrics need prometheus_client: pip install 'graceshell[metrics]'"


def renderer() -> Callable[[Status], bytes] | None:
    """Status -> exposition bytes; None when prometheus_client is not installed."""
    try:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        from prometheus_client.exposition import generate_latest
        from prometheus_client.registry import CollectorRegistry
    except ImportError:
        return None
    from graceshell.fleet.status import PHASES

    def families(status: Status) -> Iterator[Any]:
        stops = CounterMetricFamily("graceshell_stops", "Stops begun, by the stop signal (or the one a notice "
                                    "stood for) and cause", labels=["signal", "cause"])
        if status.stop_signal is not None:
            stops.add_metric([str(status.stop_signal), str(status.stop_cause)], 1)
        yield stops
        yield CounterMetricFamily("graceshell_ladder_steps", "Ladder steps fired", value=status.steps_fired)
        yield CounterMetricFamily("graceshell_tree_kills", "SIGKILLs of the whole tree", value=status.tree_kills)
        yield CounterMetricFamily("graceshell_killed_processes", "Processes graceshell signalled at a kill or "
                                  "leftover clean-up", value=status.killed_processes)
        yield GaugeMetricFamily("graceshell_orphaned_jobs", "Jobs left in the ledger after the worker exited",
                                value=status.orphaned_jobs)
        yield GaugeMetricFamily("graceshell_jobs_in_flight", "Jobs in the ledger now", value=status.jobs)
        yield CounterMetricFamily("graceshell_restarts", "Restarts of this process by graceshell start",
                                  value=status.restarts)
        yield GaugeMetricFamily("graceshell_budget_seconds", "Budget from the stop to the final KILL",
                                value=status.budget_s)
        left = GaugeMetricFamily("graceshell_budget_left_seconds", "Seconds left in the budget; the whole budget "
                                 "before a stop", value=status.budget_left_s)
        yield left
        yield GaugeMetricFamily("graceshell_last_stop_duration_seconds", "Seconds from the stop to the worker's "
                                "exit (so far, while it drains); 0 before a stop", value=status.stop_s or 0.0)
        phase = GaugeMetricFamily("graceshell_phase", "1 for the phase graceshell is in", labels=["phase"])
        for name in PHASES:
            phase.add_metric([name], 1.0 if name == status.phase else 0.0)
        yield phase
        notices = CounterMetricFamily("graceshell_interruption_notices", "Cloud interruption notices received",
                                      labels=["provider"])
        if status.interruption is not None:
            notices.add_metric([str(status.interruption["provider"])], 1)
        yield notices

    class _Collector:
        current: Status | None = None

        def collect(self) -> Iterator[Any]:
            if self.current is not None:
                yield from families(self.current)

    collector = _Collector()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)  # type: ignore[arg-type]

    def render(status: Status) -> bytes:
        collector.current = status
        try:
            return bytes(generate_latest(registry))
        finally:
            collector.current = None

    return render
