"""Celery under graceshell: pool processes that survive the platform's
broadcast, and every task in the job ledger.

Installed in the same environment as Celery, graceshell registers the
`celery graceshell` command (it says whether the integration is active);
Celery loads its command plugins whenever `celery` starts, and so this
module, in every worker. Where graceshell lives elsewhere, one line does it:

    import graceshell.integrations.celery     # where the Celery app is created

Read from celery 5.x (celery/apps/worker.py, celery/concurrency/prefork.py,
billiard/pool.py, billiard/common.py):

- A platform that signals every process (Heroku) sends SIGTERM to the pool
  processes too, and billiard installs a handler there that exits at once:
  the running task dies (WorkerLostError) although the main process's warm
  shutdown would have let it finish. Here each pool process, before its
  first task, replaces that handler: a SIGTERM during graceshell's warm
  phase is ignored; once graceshell has escalated (its shutdown notice says
  so), SIGTERM runs billiard's own handler as before. That matters because
  Celery's cold shutdown (the QUIT that the celery preset sends at
  budget-5s) cancels running tasks by sending SIGTERM to their pool
  processes: those must then obey, so that tasks with acks_late go back to
  the broker before the final kill.
- The handler is installed at task_prerun, not worker_process_init, because
  billiard resets the signal handlers after the initializer has run.
- The main process is left alone: Celery already takes one TERM as its warm
  shutdown and ignores repeats.

Tasks without acks_late are acknowledged when they start; a cold shutdown
cannot give them back. They stay in the ledger and are reported by id.
Outside graceshell nothing changes but a dictionary lookup per task.
"""

from __future__ import annotations

import functools
import os
import signal

import click
from celery import signals

from graceshell import jobs, shutdown
from graceshell.logs import logger_from_environment

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType
    from typing import Any

# graceshell's own events from inside the worker (built once, in logs.py).
_log = functools.partial(logger_from_environment, "celery")

_running: dict[str, jobs.track] = {}
_in_pool_process = False
_celery_term_handler: Any = None
_shield_installed = False
_interrupted = False  # graceshell's cold shutdown reached this process mid-task
_told_ignored = False  # the warm phase's ignored TERM is logged once per pool process


@signals.worker_process_init.connect(weak=False)
def _pool_process_started(**_: Any) -> None:
    global _in_pool_process
    _in_pool_process = True


def _term_in_pool_process(signum: int, frame: FrameType | None) -> None:
    global _interrupted, _told_ignored
    if not shutdown.escalated():
        # The platform's broadcast: the warm shutdown lets this task finish.
        if not _told_ignored:
            _told_ignored = True
            _log().info("graceshell.celery.term_ignored", pid=os.getpid(), tasks=list(_running),
                        reason="graceshell has not escalated: the warm shutdown goes on")
        return
    # Celery's cold shutdown is cancelling the task in hand. Its ledger entry
    # stays, so the report names it; with acks_late the broker redelivers it.
    _interrupted = True
    for task_id, tracker in _running.items():
        jobs.update(task_id, interrupted=True, requeued=bool(tracker.extra.get("acks_late")))
    _log().warning("graceshell.celery.cold_shutdown", pid=os.getpid(),
                   tasks=[{"id": task_id, "requeued": bool(tracker.extra.get("acks_late"))}
                          for task_id, tracker in _running.items()])
    handler = _celery_term_handler
    if callable(handler):
        handler(signum, frame)
    else:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


def _shield_pool_process() -> None:
    global _celery_term_handler, _shield_installed
    _shield_installed = True
    current = signal.getsignal(signal.SIGTERM)
    if current is not _term_in_pool_process:
        _celery_term_handler = current
        signal.signal(signal.SIGTERM, _term_in_pool_process)


@signals.task_prerun.connect(weak=False)
def _task_started(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if not shutdown.under_graceshell():
        return
    if _in_pool_process and not _shield_installed:
        _shield_pool_process()
    if task_id is None:
        return
    request = getattr(task, "request", None)
    delivery = getattr(request, "delivery_info", None) or {}
    tracker = jobs.track_deferred(task_id, getattr(task, "name", None), queue=delivery.get("routing_key"),
                         acks_late=bool(getattr(task, "acks_late", False)),
                         retries=getattr(request, "retries", None))
    _running[task_id] = tracker.__enter__()


@signals.task_postrun.connect(weak=False)
def _task_finished(task_id: str | None = None, **_: Any) -> None:
    tracker = _running.pop(task_id or "", None)
    if tracker is not None and not _interrupted:
        tracker.__exit__(None, None, None)


@signals.task_revoked.connect(weak=False)
def _task_revoked(request: Any = None, **_: Any) -> None:
    # Sent in the main process: the entry was written by a pool process.
    task_id = getattr(request, "id", None)
    if task_id:
        _task_finished(task_id)
        jobs.forget(task_id)


@click.command("graceshell", help="Say whether graceshell's integration is active in this worker.")
def status() -> None:
    if shutdown.under_graceshell():
        click.echo("graceshell: active: pool processes ignore the platform's stop signal until graceshell "
                   "escalates, and tasks are recorded in its job ledger")
    else:
        click.echo("graceshell: installed, inactive: this worker is not running under `graceshell run`")
