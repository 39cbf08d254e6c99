"""An RQ Worker that records each job in graceshell's job ledger.

    rq worker -w graceshell.integrations.rq.Worker high default

The entry is written in the work horse, where the job runs, when the job
starts, and removed when it ends. A job whose horse is killed stays in the
ledger and shows up in graceshell's report as an orphaned job, with its id.
"""

from __future__ import annotations

from rq.worker import Worker as _RQWorker

from graceshell import jobs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Worker(_RQWorker):
    def perform_job(self, job: Any, queue: Any, *args: Any, **kwargs: Any) -> Any:
        with jobs.track(job.id, job.func_name, queue=queue.name, origin=getattr(job, "origin", None)):
            return super().perform_job(job, queue, *args, **kwargs)
