"""Celery under graceshell: pool processes that survive the platform's
broadcast, and every task in the job ledger.

Installed in the same environment as Celery, graceshell registers the
`celery graceshell` command (it says whether the integration is active);
Celery loads its command plugins whenever `celery` starts, and so this
module, in every worker. Where graceshell lives elsewhere, one line does it:

    import graceshell.integrations.celery     # where the Celery app is created

Read from celery 5.5-5.7 (celery/apps/worker.py, celery/worker/consumer/
consumer.py, celery/worker/request.py, celery/concurrency/*.py, billiard/pool.py):

- Pool processes: only prefork has them. A platform that signals every
  process (Heroku) sends SIGTERM to them too, and billiard installs a
  handler there that exits at once: the running task dies (WorkerLostError)
  although the main process's warm shutdown would have let it finish. Here
  each pool process, before its first task, replaces that handler: a
  SIGTERM during graceshell's warm phase is ignored; once graceshell has
  escalated (its shutdown notice says so), SIGTERM runs billiard's own
  handler, as Celery's cold shutdown (the preset's QUIT) expects when it
  cancels the tasks in hand. The handler is installed at task_prerun, not
  worker_process_init, because billiard resets the signal handlers after
  the initializer has run. The solo pool sends worker_process_init too, but
  in the main process, which must keep Celery's TERM (its warm shutdown):
  a pool process is one that billiard started, whatever the signal says.
- The main process keeps its signals: Celery takes one TERM as its warm
  shutdown and ignores repeats. At graceshell's cold step (QUIT) two things
  are fitted to graceshell's plan. A soft shutdown the user configured
  (`worker_soft_shutdown_timeout`, Celery 5.5+; it waits that long before
  cancelling) is cut to what the KILL leaves after Celery's cold shutdown.
  And the tasks Celery cancels whose message is not yet acknowledged (those
  with acks_late; on Redis also the solo pool's early-ack task, whose ack
  waits for the event loop the task holds) are rejected with requeue, in
  every pool, before Celery cancels them: Celery leaves them to the
  worker's closing connection, which comes only if the cold shutdown ends
  before the KILL (prefork), and acknowledges them where a cancelled task
  counts as a success (a killed gevent or eventlet greenlet) or a failure
  (solo, threads: their pools cannot cancel, and the error lands in the
  task).

- Prefetched tasks that no slot has started (Celery's reserved requests:
  waiting for prefork's semaphore or its outbound buffer, the threads
  pool's executor queue, a greenlet waiting for a slot) go back to the
  queue at the warm stop, directly, when Celery's consumer closes
  (Consumer.on_close). Celery itself forgets them there and leaves their
  messages to its closing connection, which a KILL during a cold shutdown
  longer than its reserve never reaches: they sat in Redis's unacked hash
  for the visibility timeout (1 h), unreported. A message that cannot go
  back is put in the ledger, so the report names it.
- After the stop no task starts. In the threads, gevent and eventlet pools
  the slot that takes a task calls the request's accept callback first, in
  the task's own thread or greenlet: there, once graceshell's stop notice
  exists, the task is given back and not run (its early ack comes in that
  same callback, so it has not been made). Prefork's pool processes start
  a task before the main process hears of it; what holds them back is that
  nothing waiting is left to hand them after the warm stop.

Other tasks without acks_late are acknowledged when they start; a cold
shutdown cannot give them back. They stay in the ledger and are reported by
id. Republishing them at the cold step was left out: the threads and solo
pools cannot stop the task they cancel, which could then both complete and
run again.
Outside graceshell nothing changes but a dictionary lookup per task.
"""

from __future__ import annotations

import functools
import os
import signal
import sys

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
# Tasks that graceshell's cold shutdown cut: their ledger entries stay for the report.
_cut: set[str] = set()
_told_ignored = False  # the warm phase's ignored TERM is logged once per pool process


@signals.worker_process_init.connect(weak=False)
def _pool_process_started(**_: Any) -> None:
    # Celery tells its own main process from a pool process by billiard's
    # process name (celery/apps/worker.py); the solo pool sends this signal
    # in the main process.
    from billiard.process import current_process

    global _in_pool_process
    _in_pool_process = current_process()._name != "MainProcess"


def _term_in_pool_process(signum: int, frame: FrameType | None) -> None:
    global _told_ignored
    if not shutdown.escalated():
        # The platform's broadcast: the warm shutdown lets this task finish.
        if not _told_ignored:
            _told_ignored = True
            _log().info("graceshell.celery.term_ignored", pid=os.getpid(), tasks=list(_running),
                        reason="graceshell has not escalated: the warm shutdown goes on")
        return
    # Celery's cold shutdown is cancelling the task in hand. Its ledger entry
    # stays, so the report names it; with acks_late the broker redelivers it.
    _cut.update(_running)
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
    if tracker is not None and task_id not in _cut:
        tracker.__exit__(None, None, None)


class _GivenBack(Exception):
    """Raised where a pool slot would start a request after the stop: its message is back in the
    queue, and the pool's runner (celery.concurrency.base.apply_target) must not run the task."""


@signals.task_received.connect(weak=False)
def _task_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    """In the main process, for every request before Celery hands it to its pool. Where a thread or
    greenlet of this process runs it (threads, gevent, eventlet), the slot that takes it calls its
    accept callback first, and only then the task: there, once a stop has begun, the request goes
    back to the queue instead of starting (its early ack comes in that callback, so it has not been
    made). Prefork's callback runs here, once a pool process has already started the task; solo's
    in the consumer's own loop, which stops taking messages at the warm stop."""
    if request is None or not shutdown.under_graceshell() or not _slots_beside_the_consumer(sender):
        return
    accept = request.on_accepted

    def on_accepted(pid: int, time_accepted: float) -> None:
        if shutdown.requested():
            if not request.acknowledged:  # not yet given back at the warm stop
                # Celery's reject, which the threads pool hands to the event loop's thread.
                request.reject(requeue=True)
                _log().warning("graceshell.celery.unstarted_requeued", pid=os.getpid(), when="after the stop",
                               requeued=[request.id], not_requeued=[])
            raise _GivenBack(request.id)  # re-raised by apply_target: the task does not run
        accept(pid, time_accepted)

    request.on_accepted = on_accepted


def _slots_beside_the_consumer(consumer: Any) -> bool:
    """True for the pools whose tasks run in this process beside the consumer: threads, gevent, eventlet."""
    return _pool_runs_beside(type(getattr(consumer, "pool", None)))


@functools.cache
def _pool_runs_beside(pool_type: type) -> bool:
    """Asked for every task: answered once per pool class (the import and the class checks were
    a percent of a no-op task's time)."""
    from celery.concurrency.thread import TaskPool

    return issubclass(pool_type, TaskPool) or bool(getattr(pool_type, "is_green", False))


@signals.worker_ready.connect(weak=False)
def _worker_ready(sender: Any = None, **_: Any) -> None:
    """In the main process, once the consumer runs: fit its cold shutdown to graceshell's plan."""
    if not shutdown.under_graceshell() or sender is None:
        return
    controller = getattr(sender, "controller", None)
    if hasattr(controller, "wait_for_soft_shutdown"):  # Celery 5.5+
        controller.wait_for_soft_shutdown = _soft_shutdown_within_the_budget(controller)
    if hasattr(sender, "cancel_active_requests"):
        sender.cancel_active_requests = _cancel_and_give_back(sender)
    blueprint = getattr(sender, "blueprint", None)
    if getattr(blueprint, "on_close", None) is not None:
        blueprint.on_close = _give_back_before_close(sender, blueprint.on_close)


def _give_back_before_close(consumer: Any, on_close: Any) -> Any:
    """Celery's consumer, at the warm stop (Consumer.on_close), forgets its prefetched requests that
    no slot started and leaves their messages to its closing connection, which a KILL during a long
    cold shutdown never reaches: they would wait in Redis's unacked hash for the visibility timeout,
    unreported. They go back to the queue first, at once; then none of them can start later."""

    def give_back_and_close() -> None:
        from celery.worker import state

        _give_back_unstarted(_startable_no_more(consumer, tuple(state.reserved_requests)), "warm stop")
        on_close()

    return give_back_and_close


def _startable_no_more(consumer: Any, requests: tuple[Any, ...]) -> tuple[Any, ...]:
    """Those of `requests` that no slot can start once their message is back in the queue. In the
    threads, gevent and eventlet pools, any: the slot's accept callback holds them back (see
    _task_received). In prefork, those not yet written to a pool process: waiting for a free slot
    (Celery's semaphore, not yet handed to the pool) or in the pool's outbound buffer; Celery's
    close (Consumer.on_close) drops both, right after. Solo holds none: it runs each as it comes."""
    if _slots_beside_the_consumer(consumer):
        return requests

    def unwritten(request: Any) -> bool:
        reference = getattr(request, "_apply_result", None)
        if reference is None:
            return True  # waiting for the semaphore
        job = reference()
        return (job is not None and getattr(job, "_write_to", True) is None
                and getattr(job, "_scheduled_for", True) is None)

    return tuple(request for request in requests if unwritten(request))


def _soft_shutdown_within_the_budget(controller: Any) -> Any:
    """Celery's soft shutdown, cut so that its cold shutdown still ends before graceshell's KILL."""
    wait = controller.wait_for_soft_shutdown

    def wait_for_soft_shutdown() -> None:
        conf = controller.app.conf
        wanted = float(conf.worker_soft_shutdown_timeout or 0)
        left = shutdown.remaining()
        if wanted > 0 and left is not None:
            from graceshell.config.presets import PRESETS

            # What Celery's cancellation and exit need after the wait: the preset's cold floor.
            fitted = round(max(0.0, min(wanted, left - PRESETS["celery"].cold_floor)), 3)
            if fitted < wanted:
                conf.worker_soft_shutdown_timeout = fitted
                _log().info("graceshell.celery.soft_shutdown_fitted", configured_s=wanted, fitted_s=fitted,
                            kill_in_s=round(left, 3),
                            reason="graceshell's warm phase was the wait; the cold shutdown must end before "
                                   "the KILL")
        wait()

    return wait_for_soft_shutdown


def _cancel_and_give_back(consumer: Any) -> Any:
    """Celery's cancellation of the tasks in hand, with those whose message is not yet acknowledged
    given back to the broker first: back in the queue at once, whatever the pool makes of the
    cancellation (eventlet's kill runs the task's success path, and its ack, before it returns)."""
    cancel = consumer.cancel_active_requests

    def cancel_active_requests() -> None:
        hub = _eventlet_hub()
        if hub is not None:
            # The QUIT handler runs in eventlet's hub, in the middle of its
            # loop, and Celery's own cold shutdown cannot finish there ("Cannot
            # switch to MAINLOOP from MAINLOOP"): the cancellation runs once the
            # hub is back at its loop, which then ends the worker, and the
            # worker's closing connection restores the messages in hand (a
            # reject from the hub cannot reach the broker, "do not call
            # blocking functions from the mainloop", but it keeps the killed
            # task's success path from acknowledging its message).
            hub.schedule_call_global(0, give_back_and_cancel)
        else:
            give_back_and_cancel()

    def give_back_and_cancel() -> None:
        from celery.worker import state

        # First, at once, any prefetched request no slot has started (the warm
        # stop gave back those it found): Celery leaves them to its closing
        # connection, which a KILL during a long cold shutdown never reaches.
        _give_back_unstarted(_startable_no_more(consumer, tuple(state.reserved_requests)), "cold step")
        # The requests Celery cancels (Consumer.cancel_active_requests): all
        # but the acks_late ones already acknowledged. Those whose message the
        # broker still holds for this worker go back: acks_late ones, and
        # early-ack ones whose ack has not gone out yet.
        in_hand = [request for request in tuple(state.active_requests)
                   if not request.task.acks_late or not request.acknowledged]
        back = [request for request in in_hand if not request.acknowledged]
        pending_ack = [request for request in in_hand if request.acknowledged and _ack_not_sent(request)]
        given_back = {request.id for request in back + pending_ack}
        _cut.update(request.id for request in in_hand)
        for request in back:
            request.reject(requeue=True)
        for request in pending_ack:
            # The solo pool's early ack waits for the event loop, which the
            # task holds: the broker still has the message as unacked. Back to
            # the queue now; the ack that follows finds nothing to remove.
            message = request.message
            message.channel.basic_reject(message.delivery_tag, requeue=True)
        for request in in_hand:
            jobs.update(request.id, interrupted=True, requeued=request.id in given_back)
        _log().warning("graceshell.celery.requeue", pid=os.getpid(),
                       tasks=[{"id": request.id, "requeued": request.id in given_back} for request in in_hand])
        try:
            # Rejected, acks_late ones count as acknowledged: Celery would leave them running.
            for request in back:
                if request.task.acks_late:
                    request.cancel(consumer.pool, **_without_retry(request))
        finally:
            cancel()

    return cancel_active_requests


def _give_back_unstarted(requests: tuple[Any, ...], when: str) -> None:
    """Back to the queue, now, each of `requests` that no slot has started and whose message the
    broker still holds for this worker; one that cannot go back is put in the ledger, so the report
    names it. Celery's own Request.reject would only schedule the reject on its event loop, which
    has stopped turning once the worker is stopping: the message is rejected here, directly."""
    unstarted = [request for request in requests if request.time_start is None and not request.acknowledged]
    if not unstarted:
        return
    kept = []
    for request in unstarted:
        if request.acknowledged:
            # A slot's gate gave it back meanwhile (gevent, eventlet: a reject
            # here waits on the broker, and other greenlets run).
            continue
        message = request.message
        try:
            message.reject(requeue=True)
        except Exception:  # noqa: BLE001 - a broker error, or eventlet's "no blocking call from the hub"
            kept.append(request)
            jobs.track(request.id, request.name, queue=(request.delivery_info or {}).get("routing_key"),
                       started=False, requeued=False).__enter__()
        else:
            request.acknowledged = True  # Celery neither acks nor rejects it again
    _log().warning("graceshell.celery.unstarted_requeued", pid=os.getpid(), when=when,
                   requeued=[request.id for request in unstarted if request not in kept],
                   not_requeued=[request.id for request in kept])


def _ack_not_sent(request: Any) -> bool:
    """An early ack Celery has made but not yet sent (it waits for the event loop), on Redis, where a
    reject before it is safe: the late ack then removes nothing (kombu/transport/redis.py QoS)."""
    message = getattr(request, "message", None)
    channel = getattr(message, "channel", None)
    transport = getattr(channel, "connection", None)
    return (message is not None and not message.acknowledged
            and getattr(transport, "driver_type", None) == "redis")


def _eventlet_hub() -> Any:
    """eventlet's hub, when this code runs in it (an eventlet pool's signal handler); else None."""
    if "eventlet" not in sys.modules:
        return None
    import greenlet
    from eventlet.hubs import get_hub

    hub = get_hub()
    return hub if hub.greenlet is greenlet.getcurrent() else None


def _without_retry(request: Any) -> dict[str, bool]:
    """A cancelled acks_late task is redelivered, not retried: Celery 5.6+ can be told so."""
    import inspect

    return {"emit_retry": False} if "emit_retry" in inspect.signature(request.cancel).parameters else {}


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
