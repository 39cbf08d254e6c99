"""RQ workers that survive a platform stop and record their jobs.

    rq worker high default            (the rq preset sets RQ_WORKER_CLASS to
    rq worker-pool -n 4 high default   graceshell.integrations.rq.Worker)
    rq worker -w graceshell.integrations.rq.SimpleWorker ...
    rq worker -w graceshell.integrations.rq.SpawnWorker ...
    class MyWorker(graceshell.integrations.rq.WorkerMixin, MyBase): ...

`-w` replaces the preset's RQ_WORKER_CLASS: name one of the classes here, or
a class of your own that has WorkerMixin first among its bases (`graceshell
check` says so). Under graceshell (and only there) the mixin changes four
things, read from rq 3.0 rq/worker/base.py and worker_classes.py:

- The work horse (Worker, SpawnWorker) ignores SIGTERM during the warm
  phase. A platform that signals every process (Heroku) would otherwise
  kill the horse and fail the job that graceshell is giving time to finish.
- The main process takes exactly one warm-shutdown request. RQ turns a
  second TERM or INT more than a second after the first into a cold
  shutdown; here repeats are ignored until graceshell itself escalates (its
  shutdown notice says so), so a repeated platform TERM, or the SIGINT that
  `rq worker-pool` sends its workers at every TERM it gets, cannot cut a
  job short.
- The cold shutdown puts the job in hand back at the front of its queue
  instead of leaving it "started" to be failed later as abandoned (or
  failed at once, where the job runs in the main process): with a forked or
  spawned horse, after the horse is down; with SimpleWorker, whose job runs
  in the main process, by raising ColdShutdown in the job and requeueing it
  where RQ would fail it. A requeue uses up none of the job's retries. Its
  ledger entry stays, marked `requeued`, so the report still names it.
- Each job is recorded in graceshell's job ledger while it runs.

Outside graceshell they behave exactly like rq's own classes.
"""

from __future__ import annotations

import signal

from rq.worker import SimpleWorker as _RQSimpleWorker
from rq.worker import Worker as _RQWorker

from graceshell import jobs, shutdown
from graceshell.logs import logger_from_environment
from graceshell.signals import signal_name

try:  # rq 2.0 and later
    from rq.worker import SpawnWorker as _RQSpawnWorker
except ImportError:  # pragma: no cover - older rq
    _RQSpawnWorker = None

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType
    from typing import Any


class ColdShutdown(SystemExit):
    """Raised in a job that runs in the worker's own process (SimpleWorker)
    at graceshell's cold step. RQ's perform_job catches it like any error;
    the mixin then requeues the job instead of failing it. A SystemExit, so
    that raised anywhere else it still ends the worker."""


def _ignore_until_escalated(signum: int, frame: FrameType | None) -> None:
    """The horse's SIGTERM: the platform's broadcast is ignored; after
    graceshell escalated, a TERM is a real request to stop."""
    if shutdown.escalated():
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


class WorkerMixin:
    """graceshell's shutdown for any RQ worker class: put it first among the
    bases (`class MyWorker(WorkerMixin, rq.Worker)`)."""

    _graceshell_performing: Any = None  # the job whose code runs in this process now
    _graceshell_in_perform = False  # RQ's perform_job runs in this process now (its job, or saving its outcome)
    _graceshell_cold_job: str | None = None  # the job ColdShutdown was raised in

    @property
    def graceshell_log(self) -> Any:
        """graceshell's own events, through structlog, beside RQ's logging."""
        return logger_from_environment("rq").bind(worker=self.name)  # type: ignore[attr-defined]

    def _install_signal_handlers(self) -> None:
        if shutdown.under_graceshell():
            # Built now, not in a handler: building it imports structlog, and
            # a signal arriving during that import ran the handler again into
            # the half-imported module (a pool worker crashed, its horse went on).
            logger_from_environment("rq")
        super()._install_signal_handlers()  # type: ignore[misc]

    def perform_job(self, job: Any, queue: Any, *args: Any, **kwargs: Any) -> Any:
        tracker = jobs.track_deferred(job.id, job.func_name, queue=queue.name)
        tracker.__enter__()
        perform = job.perform

        def performing() -> Any:
            # Only while the job's own code runs may the cold step abort it:
            # not while RQ saves its result (that would requeue a finished job).
            self._graceshell_performing = job
            try:
                return perform()
            finally:
                self._graceshell_performing = None

        job.perform = performing
        self._graceshell_in_perform = True
        try:
            return super().perform_job(job, queue, *args, **kwargs)  # type: ignore[misc]
        finally:
            self._graceshell_in_perform = False
            del job.perform
            if self._graceshell_cold_job != job.id:  # a requeued job keeps its entry, for the report
                tracker.__exit__(None, None, None)

    def setup_work_horse_signals(self) -> None:
        super().setup_work_horse_signals()  # type: ignore[misc]
        if shutdown.under_graceshell():
            signal.signal(signal.SIGTERM, _ignore_until_escalated)

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        if not shutdown.under_graceshell():
            return super().request_force_stop(signum, frame)  # type: ignore[misc]
        if not shutdown.escalated():
            self.graceshell_log.info("graceshell.rq.repeat_ignored", signal=signal_name(signum),
                                     reason="graceshell has not escalated: the warm shutdown goes on")
            return None
        if self.horse_pid:  # type: ignore[attr-defined]
            job = self.get_current_job()  # type: ignore[attr-defined]
            self._cold_log(job, "requeue" if job is not None else "stop")
            self.kill_horse()  # type: ignore[attr-defined]
            self.wait_for_horse()  # type: ignore[attr-defined]
            if job is not None:
                self._requeue(job)
            raise SystemExit()
        job = self._graceshell_performing
        if job is not None:  # the job runs here (SimpleWorker): abort it, RQ's failure path requeues it
            self._cold_log(job, "requeue")
            self._graceshell_cold_job = job.id
            self._graceshell_performing = None
            raise ColdShutdown()
        if self._graceshell_in_perform:
            # Its code is done and RQ is saving the outcome (an exception here
            # would fail a finished job): the worker stops right after.
            self._cold_log(None, "finish saving the job, then stop")
            return None
        self._cold_log(None, "stop")
        raise SystemExit()

    def unsubscribe(self) -> None:
        """RQ's way out sends UNSUBSCRIBE, then stops its pubsub thread, which
        waits in get_message(timeout=60). redis-py 8's stop() joins that
        thread; when the thread has taken the UNSUBSCRIBE reply before the
        stop, the worker hangs up to a minute (graceshell's KILL came first in
        the end-to-end tests, about one exit in ten). Stopping the thread
        first makes that reply (or the reply to a second UNSUBSCRIBE, when the
        thread had already read the first) the one that lets it end; as much
        outside graceshell as under it."""
        thread = getattr(self, "pubsub_thread", None)
        if not thread:
            return
        self.log.info("Worker %s: unsubscribing from channel %s", self.name, self.pubsub_channel_name)  # type: ignore[attr-defined]
        try:
            thread.stop(timeout=0)  # redis-py 8: clear the running flag, do not wait yet
        except TypeError:
            thread.stop()  # redis-py before 8: it only clears the flag
        self.pubsub.unsubscribe()  # type: ignore[attr-defined]  # the reply wakes the thread, which sees the flag and ends
        thread.join(timeout=1)
        self.pubsub.close()  # type: ignore[attr-defined]

    def _cold_log(self, job: Any, action: str) -> None:
        self.graceshell_log.warning("graceshell.rq.cold_shutdown", job=job.id if job is not None else None,
                                    action=action)

    def _finalize_failure(self, job: Any, queue: Any, execution: Any, exc_info: Any) -> Any:
        """rq 3's failure path (runs the job's on_failure callback and the
        exception handlers first): a requeued job has not failed."""
        if self._graceshell_cold_job == job.id:
            return self.handle_job_failure(job, queue, execution=execution)
        return super()._finalize_failure(job, queue, execution, exc_info)  # type: ignore[misc]

    def handle_job_failure(self, job: Any, queue: Any, *args: Any, **kwargs: Any) -> Any:
        if self._graceshell_cold_job != job.id:
            return super().handle_job_failure(job, queue, *args, **kwargs)  # type: ignore[misc]
        execution = kwargs.get("execution")
        if execution is not None:  # what RQ's failure path would have cleaned up
            with self.connection.pipeline() as pipeline:  # type: ignore[attr-defined]
                self.cleanup_execution(job, pipeline=pipeline, execution=execution)  # type: ignore[attr-defined]
                pipeline.execute()
        self._requeue(job)
        return None

    def handle_exception(self, job: Any, *exc_info: Any) -> Any:
        """The exception handlers (Sentry and the like) are not told of a requeue."""
        if exc_info and exc_info[0] is ColdShutdown:
            return None
        return super().handle_exception(job, *exc_info)  # type: ignore[misc]

    def _requeue(self, job: Any) -> None:
        """Back at the front of its queue, out of the started registry; no retry is used up."""
        from rq.queue import Queue
        from rq.registry import StartedJobRegistry

        try:
            registry = StartedJobRegistry(job.origin, connection=self.connection,  # type: ignore[attr-defined]
                                          job_class=self.job_class)  # type: ignore[attr-defined]
            registry.remove_executions(job)
            Queue(job.origin, connection=self.connection, job_class=self.job_class,  # type: ignore[attr-defined]
                  serializer=self.serializer).enqueue_job(job, at_front=True)  # type: ignore[attr-defined]
            jobs.update(job.id, interrupted=True, requeued=True)
        except Exception as exc:  # noqa: BLE001 - the report must still be written
            self.graceshell_log.error("graceshell.rq.requeue_failed", job=job.id, error=str(exc))
            jobs.update(job.id, interrupted=True, requeued=False, requeue_error=str(exc))


class Worker(WorkerMixin, _RQWorker):
    """rq's Worker (a forked work horse per job) with graceshell's shutdown; the rq preset's default."""


class SimpleWorker(WorkerMixin, _RQSimpleWorker):
    """rq's SimpleWorker (jobs in the worker's own process) with graceshell's shutdown."""


if _RQSpawnWorker is not None:
    class SpawnWorker(WorkerMixin, _RQSpawnWorker):
        """rq's SpawnWorker (a posix_spawn'ed work horse per job) with graceshell's shutdown."""
