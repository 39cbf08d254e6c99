"""Huey under graceshell: a consumer that survives the platform's
broadcast, tasks in the job ledger, and a cold step that requeues.

No code to change: run graceshell's drop-in for `huey_consumer`, which
takes the same arguments:

    graceshell run --preset huey -- python -m graceshell.integrations.huey app.huey -w 4

Huey's command line loads only the Huey instance, so this is the way in
without code. Where something else runs the consumer (Django's
`run_huey`), one line where the Huey instance is created does it:

    graceshell.integrations.huey.install(huey)

Read from huey 3.5 (huey/consumer.py Consumer._handle_signal, loop, stop,
Worker.loop, ProcessEnvironment.init_child, GreenletEnvironment; huey/api.py
Huey.notify_interrupted_tasks, _execute):

- Huey's graceful signal is INT (`-g` changes it), and TERM is its
  immediate shutdown: the consumer exits and thread workers die with their
  tasks, which Huey has already taken off the queue, so they are lost. A
  platform that signals every process (Heroku) sends TERM to the consumer
  itself, beside graceshell. Here, under graceshell, the first stop signal
  of either kind is the graceful shutdown and repeats are ignored, until
  graceshell escalates (its shutdown notice says so): then a signal is
  Huey's immediate shutdown.
- After the immediate shutdown Huey sends SIGNAL_INTERRUPTED for each task
  in flight; this integration puts each back on the queue (same id, and
  the same retries left: Huey counts a retry only for a task that raised),
  and its ledger entry stays, marked `requeued`, so graceshell's report
  names it.
- A worker checks its stop flag only between tasks, and an idle one waits
  on the queue for up to a second (RedisStorage's read_timeout): a task
  that arrives then would start after the stop. Under graceshell, from the
  stop on, a task a worker dequeues goes back to the queue instead.
- Process workers (`-k process`) turn TERM into a KeyboardInterrupt in the
  running task; each one ignores the platform's TERM until graceshell has
  escalated, when the consumer's own TERM interrupts the task as before.
- Greenlet workers (`-k greenlet`, gevent) run in the consumer's process,
  so the consumer's handler covers them; at the immediate shutdown Huey
  raises KeyboardInterrupt in each (gevent.killall), which ends the task
  with SIGNAL_INTERRUPTED, and it goes back as above.

Outside graceshell the consumer behaves exactly like Huey's.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time

from huey import signals as huey_signals
from huey.consumer import Consumer as _HueyConsumer

from graceshell import jobs, shutdown
from graceshell.logs import logger_from_environment
from graceshell.signals import signal_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType
    from typing import Any

# graceshell's own events from inside the worker (built once, in logs.py).
_log = functools.partial(logger_from_environment, "huey")

# Any of these ends a task's run (or skips it); SIGNAL_INTERRUPTED is handled apart.
_FINISHED = frozenset({huey_signals.SIGNAL_COMPLETE, huey_signals.SIGNAL_ERROR, huey_signals.SIGNAL_CANCELED,
                       huey_signals.SIGNAL_LOCKED, huey_signals.SIGNAL_TIMEOUT, huey_signals.SIGNAL_RATE_LIMITED,
                       huey_signals.SIGNAL_REVOKED, huey_signals.SIGNAL_EXPIRED})
# How long a worker that put a task back waits before it looks again: the
# consumer sets its stop flag within 0.1 s of the signal (Consumer.loop).
_RECHECK_S = 0.2
# Set by the consumer's signal handler at graceshell's stop (or the platform's).
_stop_seen = False


class Consumer(_HueyConsumer):
    """Huey's consumer taking one graceful request however many stop
    signals arrive, until graceshell escalates."""

    _graceful_stop_under_way = False

    def _handle_signal(self, signum: int, frame: FrameType | None) -> None:
        global _stop_seen
        if not shutdown.under_graceshell() or signum == getattr(signal, "SIGHUP", None):
            return super()._handle_signal(signum, frame)
        _stop_seen = True  # before anything else: a worker thread may be dequeuing now
        name = signal_name(signum)
        if shutdown.escalated():
            _log().warning("graceshell.huey.cold_shutdown", signal=name,
                           tasks=[task.id for task in list(self.huey._tasks_in_flight)])
            self._restart = False
            if self._graceful_stop_under_way:
                raise KeyboardInterrupt  # Huey's own "shut down now" while it waits for the workers
            self._signum, self._graceful = self._interrupt_sig, False
            return None
        if self._signum is None:
            self._signum, self._restart, self._graceful = self._graceful_sig, False, True
        else:  # the platform's broadcast beside graceshell's own signal: the graceful shutdown goes on
            _log().info("graceshell.huey.signal_ignored", signal=name,
                        reason="graceshell has not escalated: the graceful shutdown goes on")
        return None

    def stop(self, graceful: bool = False) -> None:
        self._graceful_stop_under_way = graceful
        try:
            super().stop(graceful=graceful)
        finally:
            self._graceful_stop_under_way = False


class _Ledger:
    """Each task in the job ledger while it runs; interrupted ones requeued."""

    def __init__(self, huey: Any) -> None:
        self.huey = huey
        # Each task's tracker, by id. Called for every task, so no lock: a
        # dict's set and pop are atomic (the GIL; greenlets switch only on I/O).
        self.running: dict[str, jobs.track] = {}

    def __call__(self, huey_signal: str, task: Any, *args: Any, **kwargs: Any) -> None:
        if huey_signal == huey_signals.SIGNAL_EXECUTING:
            tracker = jobs.track_deferred(task.id, task.name, queue=self.huey.name, retries=task.retries).__enter__()
            self.running[task.id] = tracker
        elif huey_signal == huey_signals.SIGNAL_INTERRUPTED:
            self.running.pop(task.id, None)  # the entry stays for the report
            self.requeue(task)
        elif huey_signal in _FINISHED:
            tracker = self.running.pop(task.id, None)
            if tracker is not None:
                tracker.__exit__(None, None, None)

    def requeue(self, task: Any) -> None:
        try:
            self.huey.enqueue(task)
            jobs.update(task.id, interrupted=True, requeued=True)
            _log().warning("graceshell.huey.requeued", task=task.id, name=task.name)
        except Exception as exc:  # noqa: BLE001 - the consumer must still exit, and the report say why
            jobs.update(task.id, interrupted=True, requeued=False, requeue_error=str(exc))
            _log().error("graceshell.huey.requeue_failed", task=task.id, name=task.name, error=str(exc))


def _shield_process_worker() -> None:
    """A startup hook: in a process worker, the platform's TERM is ignored
    until graceshell escalates. (Thread and greenlet workers have no
    process of their own: the consumer's handler covers them.)"""
    if not shutdown.under_graceshell() or threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        huey_handler = signal.getsignal(signum)
        if "init_child" not in getattr(huey_handler, "__qualname__", ""):
            continue  # not the interrupt handler of Huey's ProcessEnvironment

        def interrupt_once_escalated(number: int, frame: FrameType | None, huey_handler: Any = huey_handler) -> None:
            if shutdown.escalated():
                huey_handler(number, frame)
            else:
                _log().info("graceshell.huey.term_ignored", pid=os.getpid(),
                            reason="graceshell has not escalated: the task in hand goes on")

        signal.signal(signum, interrupt_once_escalated)


def _no_task_after_the_stop(huey: Any) -> None:
    """An idle worker waits on the queue for up to a second (RedisStorage's
    read_timeout) and runs what it gets, even when the stop came meanwhile:
    from graceshell's stop on, a task dequeued goes back to the queue."""
    dequeue = huey.dequeue
    notice = os.environ[shutdown.SHUTDOWN_FILE_ENV]  # what shutdown.requested() stats
    consumer_pid = os.getpid()

    def dequeue_unless_stopping() -> Any:
        task = dequeue()
        # Thread and greenlet workers share the consumer's process: its signal
        # handler's flag says it, for a dict lookup. A process worker looks
        # for graceshell's notice (a stat: 3 % of a no-op task's time, so not
        # where the flag can answer).
        if task is None or (not _stop_seen and (os.getpid() == consumer_pid or not os.path.exists(notice))):
            return task
        huey.enqueue(task)  # at the back of the queue: Huey has no way to put it at the front
        _log().info("graceshell.huey.not_started", task=task.id, name=task.name,
                    reason="the consumer is stopping: the task went back to its queue")
        time.sleep(_RECHECK_S)  # the worker then sees the stop flag, instead of taking the task again
        return None

    huey.dequeue = dequeue_unless_stopping


def install(huey: Any) -> Any:
    """Give `huey` graceshell's consumer, ledger and requeue; returns it."""
    if shutdown.under_graceshell():  # outside graceshell, nothing is added to a task's path
        huey.signal()(_Ledger(huey))
        _no_task_after_the_stop(huey)
    huey.on_startup("graceshell")(_shield_process_worker)
    huey.create_consumer = lambda **options: Consumer(huey, **options)
    return huey


def main() -> None:
    """`huey_consumer`, with graceshell's integration installed on the instance it loads."""
    import logging
    import sys

    from huey.bin.huey_consumer import err, load_huey
    from huey.constants import WORKER_PROCESS
    from huey.consumer_options import ConsumerConfig, OptionParserHandler

    options, args = OptionParserHandler().get_option_parser().parse_args()
    if not args:
        err("Error:   missing import path to `Huey` instance")
        err("Example: python -m graceshell.integrations.huey app.queue.huey_instance")
        sys.exit(1)
    config = ConsumerConfig(**{k: v for k, v in options.__dict__.items() if v is not None})
    config.validate()
    if sys.platform == "win32" and config.worker_type == WORKER_PROCESS:
        err('Error:  huey cannot be run in "process"-mode on Windows.')
        sys.exit(1)
    # Huey restarts on SIGHUP with execl(python, python, *sys.argv): as a
    # script this file would shadow the huey package, so restart as -m.
    sys.argv[:1] = ["-m", "graceshell.integrations.huey"]
    huey = install(load_huey(args[0]))
    config.setup_logger(logging.getLogger("huey"))
    huey.create_consumer(**config.values).run()


if __name__ == "__main__":
    main()
