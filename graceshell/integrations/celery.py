"""Record every Celery task in graceshell's job ledger.

Import this module where the Celery app is created (`import
graceshell.integrations.celery`). The handlers are connected before the pool
forks, so every pool process records the tasks it runs: the ledger entry is
written at task_prerun and removed at task_postrun (or when the task is
revoked). A task whose process is killed mid-run stays in the ledger and
shows up in graceshell's report as an orphaned job, with its id.
"""

from __future__ import annotations

from celery import signals

from graceshell import jobs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_running: dict[str, jobs.track] = {}


@signals.task_prerun.connect(weak=False)
def _task_started(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task_id is None:
        return
    request = getattr(task, "request", None)
    tracker = jobs.track(task_id, getattr(task, "name", None),
                         queue=getattr(request, "delivery_info", {}).get("routing_key") if request else None,
                         retries=getattr(request, "retries", None))
    _running[task_id] = tracker.__enter__()


@signals.task_postrun.connect(weak=False)
def _task_finished(task_id: str | None = None, **_: Any) -> None:
    tracker = _running.pop(task_id or "", None)
    if tracker is not None:
        tracker.__exit__(None, None, None)


@signals.task_revoked.connect(weak=False)
def _task_revoked(request: Any = None, **_: Any) -> None:
    # Sent in the main process: the entry was written by a pool process.
    task_id = getattr(request, "id", None)
    if task_id:
        _task_finished(task_id)
        jobs.forget(task_id)
