"""Dramatiq under graceshell: worker processes that survive the platform's
broadcast, messages in the job ledger, and a cold step that requeues.

No code to change: name this module on Dramatiq's command line, after the
broker. Every worker process imports the modules listed there:

    dramatiq app graceshell.integrations.dramatiq      (with --preset dramatiq)

(or `import graceshell.integrations.dramatiq` in the module that calls
`dramatiq.set_broker`). It adds a middleware to the global broker, and acts
only in a Dramatiq worker process started by graceshell.

Read from dramatiq 2.2 (dramatiq/cli.py main() and worker_process(),
dramatiq/worker.py Worker.stop, dramatiq/brokers/redis.py):

- The main process forwards every TERM it gets to each worker process. A
  worker process's first TERM is the warm shutdown (the worker threads
  finish their messages, for up to --worker-shutdown-timeout); its second
  TERM is sys.exit at once. On a platform that signals every process
  (Heroku) a worker process gets the platform's TERM and the main
  process's forward of it: two TERMs, and unless they arrive close enough
  to be taken as one, it dies at once and takes its running messages with
  it. Here a worker process takes one warm request however many TERMs
  arrive, until graceshell escalates (its shutdown notice says so).
- At graceshell's cold step (the preset's second TERM, forwarded by the
  main process) the messages in hand go back to their queues before the
  process exits. Dramatiq itself would leave them unacknowledged: the Redis
  broker gives them back only once the worker's heartbeat has been missing
  for 60 s, and only while another worker is running. Their ledger entries
  stay, marked `requeued`, so graceshell's report names them.

Every message is recorded in the ledger while an actor runs it.
"""

from __future__ import annotations

import functools
import os
import signal
import threading

import dramatiq
from dramatiq.middleware import Middleware

from graceshell import jobs, shutdown
from graceshell.logs import logger_from_environment

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType
    from typing import Any

# graceshell's own events from inside the worker (built once, in logs.py).
_log = functools.partial(logger_from_environment, "dramatiq")


class GraceshellMiddleware(Middleware):
    """Records each message in the ledger; on the cold step, requeues the
    messages still running."""

    def __init__(self) -> None:
        self.worker: Any = None
        self._lock = threading.Lock()
        self._running: dict[str, tuple[Any, jobs.track]] = {}
        self._requeued = False

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        self.worker = worker

    def before_process_message(self, broker: Any, message: Any) -> None:
        tracker = jobs.track_deferred(message.message_id, message.actor_name, queue=message.queue_name,
                             retries=message.options.get("retries", 0)).__enter__()
        with self._lock:
            self._running[message.message_id] = (message, tracker)

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                              exception: BaseException | None = None) -> None:
        self._finished(message)

    def after_skip_message(self, broker: Any, message: Any) -> None:
        self._finished(message)

    def _finished(self, message: Any) -> None:
        with self._lock:
            if self._requeued:
                return  # the process is going down: the entry must stay for the report
            entry = self._running.pop(message.message_id, None)
        if entry is not None:
            entry[1].__exit__(None, None, None)

    def running_ids(self) -> list[str]:
        with self._lock:
            return list(self._running)

    def requeue_running(self) -> list[dict[str, Any]]:
        """Put the messages in hand back on their queues; their entries stay.
        Returns what became of each, for the log."""
        with self._lock:
            self._requeued = True
            running = list(self._running.values())
        outcomes = []
        for message, _ in running:
            consumer = getattr(self.worker, "consumers", {}).get(message.queue_name)
            try:
                if consumer is None:
                    raise LookupError(f"no consumer for queue {message.queue_name!r}")
                consumer.requeue_messages([message])
                jobs.update(message.message_id, interrupted=True, requeued=True)
                outcomes.append({"id": message.message_id, "requeued": True})
            except Exception as exc:  # noqa: BLE001 - the process must still exit, and the report say why
                jobs.update(message.message_id, interrupted=True, requeued=False, requeue_error=str(exc))
                outcomes.append({"id": message.message_id, "requeued": False, "error": str(exc)})
        return outcomes


_middleware = GraceshellMiddleware()
_dramatiq_term_handler: Any = None
_warm_delivered = False
_told_ignored = False  # the warm phase's ignored TERM is logged once per worker process


def _term_in_worker_process(signum: int, frame: FrameType | None) -> None:
    global _warm_delivered, _told_ignored
    if shutdown.escalated():
        _log().warning("graceshell.dramatiq.cold_shutdown", pid=os.getpid(), messages=_middleware.requeue_running())
        if not _warm_delivered:
            _warm_delivered = True
            _dramatiq_term_handler(signum, frame)
        _dramatiq_term_handler(signum, frame)  # Dramatiq's second TERM: exit now
        return
    if _warm_delivered:
        # The platform's broadcast, or the main process forwarding it: the warm shutdown goes on.
        if not _told_ignored:
            _told_ignored = True
            _log().info("graceshell.dramatiq.term_ignored", pid=os.getpid(), messages=_middleware.running_ids(),
                        reason="graceshell has not escalated: the warm shutdown goes on")
        return
    _warm_delivered = True
    _dramatiq_term_handler(signum, frame)


def _in_worker_process(handler: Any) -> bool:
    """Dramatiq's worker_process() installed `handler`: this is a worker process,
    not a web process or a script that imports the broker's module."""
    return (getattr(handler, "__module__", None) == "dramatiq.cli"
            and getattr(handler, "__qualname__", "").startswith("worker_process."))


def _install() -> None:
    global _dramatiq_term_handler
    if not shutdown.under_graceshell() or threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    if not _in_worker_process(current):
        return
    _dramatiq_term_handler = current
    signal.signal(signal.SIGTERM, _term_in_worker_process)
    dramatiq.get_broker().add_middleware(_middleware)


_install()
