"""Dramatiq under graceshell: worker processes that survive the platform's
broadcast, messages in the job ledger, and a cold step that gives back
every message the process holds.

No code to change: name this module on Dramatiq's command line, after the
broker. Every worker process imports the modules listed there:

    dramatiq app graceshell.integrations.dramatiq      (with --preset dramatiq)

(or `import graceshell.integrations.dramatiq` in the module that calls
`dramatiq.set_broker`). It adds a middleware to the global broker, and acts
only in a Dramatiq worker process started by graceshell.

Read from dramatiq 2.2 (dramatiq/cli.py main() and worker_process(),
dramatiq/worker.py Worker.stop, ConsumerThread, WorkerThread,
dramatiq/brokers/redis.py and redis/dispatch.lua):

- The main process forwards every TERM it gets to each worker process. A
  worker process's first TERM is the warm shutdown: within a second
  (worker_process() polls once a second) Worker.stop stops the worker
  threads, waits up to --worker-shutdown-timeout (default 10 minutes) for
  the running messages, then puts the waiting ones back. Its second TERM is
  sys.exit at once. On a platform that signals every process (Heroku) a
  worker process gets the platform's TERM and the main process's forward of
  it: two TERMs, and unless they arrive close enough to be taken as one, it
  dies at once and takes its running messages with it. Here a worker
  process takes one warm request however many TERMs arrive, until
  graceshell escalates (its shutdown notice says so).
- A worker process holds more messages than it runs: each consumer fetches
  ahead (2 per worker thread by default, dramatiq_queue_prefetch) into its
  cache and the work queue, and holds delayed messages (an eta, a retry's
  backoff) in memory until they are due. Every one of them sits in the
  Redis broker's ack set of this process until it is acknowledged or
  requeued. A process that exits without Worker.stop leaves them there: the
  broker gives them back only once the process's heartbeat is older than
  its heartbeat_timeout (60 s), and then only when a live worker runs
  maintenance on that queue, which happens on 1 in 1,000 of its broker
  commands (maintenance_chance): minutes later, or never if no worker runs.
- Between the first TERM and Worker.stop, and while a stopped worker thread
  still waits on the work queue, Dramatiq starts messages that were only
  waiting. Here the worker threads are stopped at the first TERM, and a
  message that reaches one anyway goes back to its queue instead of
  starting.
- At graceshell's cold step (the preset's second TERM, forwarded by the main
  process), and when Worker.stop gives up on its timeout, every message the
  process holds goes back to its queue: running, waiting and delayed. The
  running ones' ledger entries stay, marked `requeued`, so graceshell's
  report names them; a message that could not be given back is named in
  the report with the error. Nothing is failed or retried, so a requeue
  uses up none of the message's retries.
- Worker.stop's timeout (--worker-shutdown-timeout) is cut to end before
  graceshell's KILL, so Dramatiq's own stop is never cut off halfway.

Every message is recorded in the ledger while an actor runs it.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from collections import defaultdict

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.common import iter_queue
from dramatiq.message import Message
from dramatiq.middleware import Middleware, SkipMessage

from graceshell import jobs, shutdown
from graceshell.logs import logger_from_environment

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType
    from typing import Any

# graceshell's own events from inside the worker (built once, in logs.py).
_log = functools.partial(logger_from_environment, "dramatiq")

# What Worker.stop needs after its wait for the worker threads: it stops its
# consumer threads, which look up once a second (dramatiq_worker_timeout),
# and puts the waiting messages back. Its timeout ends this long before
# graceshell's KILL; the dramatiq preset's cold step (2 s before) comes first.
STOP_MARGIN_S = 1.5


class GraceshellMiddleware(Middleware):
    """Records each message in the ledger; from the stop on, starts none;
    at the cold step, gives back every message the process holds."""

    def __init__(self) -> None:
        self.worker: Any = None
        # Reentrant: the TERM handler takes it in the main thread, which may
        # hold it already (Worker.stop's log) when the signal comes.
        self._lock = threading.RLock()
        self._running: dict[str, tuple[Any, jobs.track]] = {}
        self._stopping = False  # the warm shutdown has begun: no message starts any more
        self.stopped_at: float | None = None  # when (epoch seconds), for the log
        self._requeued = False  # the messages in hand went back: their entries stay for the report

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        self.worker = worker
        worker.stop = self._stop_in_time(worker.stop)  # worker_process() calls it with its own timeout
        # The logger imports structlog on first use: never first in a signal
        # handler, where another TERM (the platform's beside the forwarded one)
        # could cut into the import.
        _log()

    def stop_starting(self) -> None:
        """The warm shutdown: stop the worker threads now (Dramatiq does it up
        to a second later) and let no waiting message start."""
        self._stopping = True
        self.stopped_at = time.time()
        for thread in list(getattr(self.worker, "workers", ())):
            thread.stop()

    def before_process_message(self, broker: Any, message: Any) -> None:
        if self._stopping and self._give_back(message):
            raise SkipMessage  # acknowledged by Dramatiq next, which does not touch a requeued message
        tracker = jobs.track_deferred(message.message_id, message.actor_name, queue=message.queue_name,
                                      retries=message.options.get("retries", 0)).__enter__()
        with self._lock:
            self._running[message.message_id] = (message, tracker)

    def _give_back(self, message: Any) -> bool:
        """A message that reached a worker thread after the stop goes back to
        its queue; False (and it runs, as in Dramatiq) when it cannot."""
        try:
            self.worker.consumers[message.queue_name].requeue_messages([message])
        except Exception as exc:  # noqa: BLE001 - running it is what Dramatiq would do
            _log().error("graceshell.dramatiq.requeue_failed", message=message.message_id, error=str(exc))
            return False
        _log().info("graceshell.dramatiq.not_started", pid=os.getpid(), message=message.message_id,
                    reason="the worker is stopping: the message went back to its queue")
        return True

    def _stop_in_time(self, stop: Callable[..., None]) -> Callable[..., None]:
        """Worker.stop with its timeout cut so it ends STOP_MARGIN_S before
        graceshell's KILL (Dramatiq's default is 10 minutes). It runs in the
        main thread, outside the signal handler: the warm shutdown is logged here."""

        @functools.wraps(stop)
        def stop_in_time(timeout: int = 600_000) -> None:
            left = shutdown.remaining()  # None: not a stop of graceshell's
            fitted = timeout if left is None else min(timeout, int(max(0.0, left - STOP_MARGIN_S) * 1000))
            _log().info("graceshell.dramatiq.warm_shutdown", pid=os.getpid(), stopped_at=self.stopped_at,
                        messages=self.running_ids(), timeout_ms=fitted,
                        **({"given_timeout_ms": timeout} if fitted != timeout else {}))
            stop(timeout=fitted)

        return stop_in_time

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                              exception: BaseException | None = None) -> None:
        self._finished(message)

    def after_skip_message(self, broker: Any, message: Any) -> None:
        self._finished(message)

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        # Worker.stop has put back the work queue and the delay queues; what
        # is left is a message still running when its timeout ran out, and
        # the rest of a fetch in a consumer's cache (its loop ends after one).
        outcomes = self.requeue_held()
        if outcomes:
            _log().warning("graceshell.dramatiq.requeued_after_stop", pid=os.getpid(), messages=outcomes)

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

    def requeue_held(self) -> list[dict[str, Any]]:
        """Put every message this process holds back on its queue: running,
        waiting in the work queue or a consumer's cache, delayed. Running
        messages keep their ledger entries; one that cannot go back gets an
        entry, so the report names it. Returns what became of each, for the log."""
        with self._lock:
            if self._requeued:  # after Worker.stop gave up, and again at the cold TERM: once is all
                return []
            self._requeued = True
            running = [message for message, _ in self._running.values()]
        consumers = dict(getattr(self.worker, "consumers", None) or {})
        for thread in consumers.values():
            _stop_fetching(thread)
        by_queue: dict[str, list[tuple[Any, str]]] = defaultdict(list)
        for message in running:
            by_queue[message.queue_name].append((message, "running"))
        if self.worker is not None:
            for item in iter_queue(self.worker.work_queue):
                by_queue[item.message.queue_name].append((item.message, "waiting"))
        for queue_name, thread in consumers.items():
            by_queue[queue_name].extend((message, where) for message, where in _held_by_consumer(thread))
        outcomes = []
        for queue_name, held in by_queue.items():
            error = _requeue(consumers.get(queue_name), queue_name, [message for message, _ in held])
            for message, where in held:
                _note_in_ledger(message, where, error)
                outcomes.append({"id": message.message_id, "held": where, "requeued": error is None,
                                 **({"error": error} if error else {})})
        outcomes.extend(_sweep_redis_acks(getattr(self.worker, "broker", None), list(consumers)))
        return outcomes


def _stop_fetching(thread: Any) -> None:
    """A consumer thread fetches nothing more (its Redis consumer checks its
    prefetch before each fetch) and ends its loop."""
    thread.stop()
    consumer = getattr(thread, "consumer", None)
    if consumer is not None and hasattr(consumer, "prefetch"):
        consumer.prefetch = 0


def _held_by_consumer(thread: Any) -> list[tuple[Any, str]]:
    """The messages a consumer thread holds and has not handed to the work
    queue: its delayed ones and its last fetch's rest (the Redis consumer's cache)."""
    held = [(item.message, "delayed") for item in iter_queue(thread.delay_queue)]
    cache = getattr(getattr(thread, "consumer", None), "message_cache", None)
    while cache:
        try:
            data = cache.pop(0)  # the consumer thread may take the last one first
        except IndexError:
            break
        try:
            held.append((MessageProxy(Message.decode(data)), "waiting"))
        except Exception:  # noqa: BLE001 - None or undecodable: still in the ack set, the sweep gives it back
            continue
    return held


def _requeue(consumer_thread: Any, queue_name: str, messages: list[Any]) -> str | None:
    """Dramatiq's own requeue of `messages` (Worker.stop's); the error, or None."""
    try:
        if consumer_thread is None:
            raise LookupError(f"no consumer for queue {queue_name!r}")
        consumer_thread.requeue_messages(messages)
    except Exception as exc:  # noqa: BLE001 - the process must still exit, and the report say why
        return str(exc) or type(exc).__name__
    return None


def _note_in_ledger(message: Any, where: str, error: str | None) -> None:
    """Running messages are in the ledger already; a waiting or delayed one
    enters it only when it could not go back, so the report names it."""
    if where == "running":
        jobs.update(message.message_id, interrupted=True, requeued=error is None,
                    **({"requeue_error": error} if error else {}))
    elif error is not None:
        jobs.track(message.message_id, message.actor_name, queue=message.queue_name, held=where,
                   interrupted=False, requeued=False, requeue_error=error).__enter__()


def _sweep_redis_acks(broker: Any, queue_names: list[str]) -> list[dict[str, Any]]:
    """The Redis broker's record of what this process holds is its ack sets
    (dispatch.lua: `fetch` adds, `ack` and `requeue` remove). A message a
    consumer thread was handing over, or a fetch that was under way, when
    the rest went back is still there: requeue it as the broker's own
    maintenance would, minutes later, once this process's heartbeat is stale."""
    # Looked up, not imported: this runs in a signal handler, and a handler must never import.
    redis_brokers = sys.modules.get("dramatiq.brokers.redis")
    if redis_brokers is None or not isinstance(broker, redis_brokers.RedisBroker):
        return []  # RabbitMQ gives back a consumer's unacknowledged messages when it disconnects
    outcomes: list[dict[str, Any]] = []
    for queue_name in queue_names:
        try:
            left = sorted(broker.client.smembers(f"{broker.namespace}:__acks__.{broker.broker_id}.{queue_name}"))
            if left:
                broker.do_requeue(queue_name, *left)
        except Exception as exc:  # noqa: BLE001 - the process must still exit, and the log say why
            outcomes.append({"queue": queue_name, "requeued": False, "error": str(exc) or type(exc).__name__})
            continue
        outcomes.extend({"redis_id": redis_id.decode(), "held": "being handed over", "requeued": True}
                        for redis_id in left)
    return outcomes


_middleware = GraceshellMiddleware()
_dramatiq_term_handler: Any = None
_warm_delivered = False
_told_ignored = False  # the warm phase's ignored TERM is logged once per worker process


def _term_in_worker_process(signum: int, frame: FrameType | None) -> None:
    global _warm_delivered, _told_ignored
    if shutdown.escalated():
        _log().warning("graceshell.dramatiq.cold_shutdown", pid=os.getpid(), messages=_middleware.requeue_held())
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
    _middleware.stop_starting()
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
