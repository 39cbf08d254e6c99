"""An RQ Worker that survives a platform stop and records its jobs.

    rq worker -w graceshell.integrations.rq.Worker high default
    (the rq preset sets RQ_WORKER_CLASS to it, so `rq worker` alone is enough)

Under graceshell (and only there) it changes three things, read from
rq/worker/base.py:

- The work horse ignores SIGTERM during the warm phase. A platform that
  signals every process (Heroku) would otherwise kill the horse and fail the
  job that graceshell is giving time to finish.
- The main process takes exactly one warm-shutdown request. RQ turns a
  second TERM more than a second after the first into a cold shutdown;
  here repeats are ignored until graceshell itself escalates (its shutdown
  notice says so), so a repeated platform TERM cannot cut a job short.
- The cold shutdown puts the job in hand back at the front of its queue
  after the horse is down, instead of leaving it "started" to be failed
  later as abandoned. Its ledger entry stays, marked `requeued`, so the
  report still names it.

Each job is recorded in graceshell's job ledger while the horse runs it.
Outside graceshell it behaves exactly like rq's Worker.
"""

from __future__ import annotations

import signal

from rq.worker import Worker as _RQWorker

from graceshell import jobs, shutdown
from graceshell.logs import logger_from_environment
from graceshell.signals import signal_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType
    from typing import Any


def _ignore_until_escalated(signum: int, frame: FrameType | None) -> None:
    """The horse's SIGTERM: the platform's broadcast is ignored; after
    graceshell escalated, a TERM is a real request to stop."""
    if shutdown.escalated():
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


class Worker(_RQWorker):
    @property
    def graceshell_log(self) -> Any:
        """graceshell's own events, through structlog, beside RQ's logging."""
        return logger_from_environment("rq").bind(worker=self.name)

    def perform_job(self, job: Any, queue: Any, *args: Any, **kwargs: Any) -> Any:
        with jobs.track_deferred(job.id, job.func_name, queue=queue.name):
            return super().perform_job(job, queue, *args, **kwargs)

    def setup_work_horse_signals(self) -> None:
        super().setup_work_horse_signals()
        if shutdown.under_graceshell():
            signal.signal(signal.SIGTERM, _ignore_until_escalated)

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        if not shutdown.under_graceshell():
            return super().request_force_stop(signum, frame)
        if not shutdown.escalated():
            self.graceshell_log.info("graceshell.rq.repeat_ignored", signal=signal_name(signum),
                                     reason="graceshell has not escalated: the warm shutdown goes on")
            return None
        job = self.get_current_job()
        self.graceshell_log.warning("graceshell.rq.cold_shutdown", job=job.id if job is not None else None,
                                    action="requeue" if job is not None else "stop")
        if self.horse_pid:
            self.kill_horse()
            self.wait_for_horse()
        if job is not None:
            self._requeue(job)
        raise SystemExit()

    def _requeue(self, job: Any) -> None:
        """Back at the front of its queue, out of the started registry."""
        from rq.queue import Queue
        from rq.registry import StartedJobRegistry

        try:
            registry = StartedJobRegistry(job.origin, connection=self.connection, job_class=self.job_class)
            registry.remove_executions(job)
            Queue(job.origin, connection=self.connection, job_class=self.job_class,
                  serializer=self.serializer).enqueue_job(job, at_front=True)
            jobs.update(job.id, requeued=True)
        except Exception as exc:  # noqa: BLE001 - the report must still be written
            self.graceshell_log.error("graceshell.rq.requeue_failed", job=job.id, error=str(exc))
            jobs.update(job.id, requeued=False, requeue_error=str(exc))
