"""Celery in the execution models its users deploy, through a real platform
stop on redis-server: bare beside graceshell with the celery preset.

The cells: pools prefork, threads, gevent and eventlet (three tasks at
once: a short one, which runs until the worker has its stop and 1.5 s
more, a 60 s early-ack one and a 60 s acks_late one), the solo pool (one task in hand:
the short one, or a 60 s one with early ack or acks_late), and Celery 5.5's
soft shutdown (`worker_soft_shutdown_timeout`) on prefork. Every worker has
a backlog queued behind the tasks in hand, larger than its prefetch
(Celery's default multiplier, 4 per slot). Each cell is stopped both ways
(TERM to every process, TERM to the process group only), bare and under
graceshell, and all of them at once: each mostly waits on a sleeping task
or a timeout.

Under graceshell the rule is asserted: no task in hand does worse than
bare, the short task completes, a 60 s task whose message the broker still
holds is back in its queue at once (not in Redis's `unacked` hash, which
only another worker's restore brings back, after the visibility timeout),
no worker starts any of its backlog after the stop (bare, a pool of several
slots starts those Celery had already handed to it), and every task that is
neither done nor back is named in the orphan report. A 60 s task that
Celery acknowledged when it started cannot be given back, bare or not. One
more prefork cell makes the cold shutdown outlast its reserve (a
`worker_shutting_down` handler that sleeps): graceshell's KILL comes before
Celery closes its connection, and the prefetched backlog must already be
back in the queue.
"""

import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conftest import clean_env, wait_for
from survival_helpers import BIN, LONG, SHORT, drill, finish, outcome_of, record, scenarios_of, stop_drill

pytest.importorskip("celery")

APP = """
import os, time
from celery import Celery
# No import of graceshell.integrations.celery: Celery loads it as a command
# plugin, because graceshell is installed in the same environment.

queue = os.environ["QUEUE"]
app = Celery("survival_models", broker=os.environ["REDIS_URL"])
app.conf.update(broker_connection_retry_on_startup=True, task_default_queue=queue,
                # each cell its own unacked hash: the cells share one Redis
                broker_transport_options={"unacked_key": queue + ":unacked",
                                          "unacked_index_key": queue + ":unacked_index",
                                          "unacked_mutex_key": queue + ":unacked_mutex"})
if os.environ.get("SOFT_SHUTDOWN_S"):
    app.conf.worker_soft_shutdown_timeout = float(os.environ["SOFT_SHUTDOWN_S"])

if os.environ.get("SLOW_COLD_SHUTDOWN_S"):
    from celery.signals import worker_shutting_down

    @worker_shutting_down.connect
    def _slow(how=None, **_):
        # A cold shutdown longer than its reserve, as on a machine loaded far
        # beyond its cores (or a user's own slow handler): sent after Celery's
        # cancelling, before the worker closes its broker connection.
        if how == "Cold":
            time.sleep(float(os.environ["SLOW_COLD_SHUTDOWN_S"]))

def _started(task):
    # Whether graceshell's stop notice existed when the task began: under
    # graceshell, that is what "started after the stop" means.
    from graceshell import shutdown
    with open(os.path.join(os.environ["MARKS_DIR"], "started-" + task.request.id), "w") as mark:
        mark.write("after the stop" if shutdown.requested() else "")

def _run(task, seconds):
    marks = os.environ["MARKS_DIR"]
    _started(task)
    time.sleep(seconds)
    open(os.path.join(marks, "done-" + task.request.id), "w").close()

@app.task(name="work", bind=True)
def work(self, seconds):
    _run(self, seconds)

@app.task(name="work_late", bind=True, acks_late=True)
def work_late(self, seconds):
    _run(self, seconds)

@app.task(name="work_from_the_stop", bind=True)
def work_from_the_stop(self, seconds):
    # Running when the worker gets its stop, whatever the machine's load, and then `seconds` more.
    marks = os.environ["MARKS_DIR"]
    _started(self)
    while not os.path.exists(os.environ["STOPPED_FLAG"]):
        time.sleep(0.02)
    time.sleep(seconds)
    open(os.path.join(marks, "done-" + self.request.id), "w").close()
"""

PREFETCH_MULTIPLIER = 4  # Celery's default
POOLS = ("prefork", "threads", "gevent", "eventlet")
# The short job in hand runs until the worker has its stop (Celery prints
# its warm shutdown), then SHORT seconds more: it is running at the stop
# however loaded the machine (the drill's stop came more than 3 s after the
# test asked for it at a load average of 60), and fits the warm phase.
SHORT_IN_HAND = ("work_from_the_stop", SHORT)
STOP_SEEN = b"Warm shutdown (MainProcess)"  # celery/apps/worker.py, at the worker's TERM
SOLO_IN_HAND = {"short": SHORT_IN_HAND, "long": ("work", LONG), "long acks_late": ("work_late", LONG)}
BROADCASTS = ("all", "group")
WRAPPED = (True, False)


class Cell:
    """One Celery worker under a drill: its jobs in hand, its backlog, and what became of them."""

    def __init__(self, tmp: Path, redis_url: str, pool: str, concurrency: int, broadcast: str, wrapped: bool,
                 soft_shutdown: float | None = None, slow_cold_shutdown: float | None = None) -> None:
        from celery import Celery
        from redis import Redis

        self.wrapped = wrapped
        self.queue = tmp.name  # unique: tmp_path_factory numbers its directories
        self.marks = tmp / "marks"
        self.marks.mkdir()
        (tmp / "survival_models.py").write_text(textwrap.dedent(APP))
        self.ready = tmp / "ready.flag"
        env = clean_env(PYTHONPATH=str(tmp), REDIS_URL=redis_url, MARKS_DIR=str(self.marks), QUEUE=self.queue,
                        STOPPED_FLAG=str(tmp / "stopped.flag"),
                        **({"SOFT_SHUTDOWN_S": f"{soft_shutdown:g}"} if soft_shutdown else {}),
                        **({"SLOW_COLD_SHUTDOWN_S": f"{slow_cold_shutdown:g}"} if slow_cold_shutdown else {}))
        args = ["--broadcast", broadcast, "--preset", "celery", *([] if wrapped else ["--no-wrap"]), "--",
                str(BIN / "celery"), "-A", "survival_models", "worker", "--pool", pool, "-c", str(concurrency),
                "--without-heartbeat", "--without-mingle", "--without-gossip", "-l", "warning", "-Q", self.queue]
        self.log = tmp / "drill.log"  # the worker's output and graceshell's log
        with open(self.log, "wb") as log:
            self.proc = drill(tmp, args, env, ready=self.ready, stderr=log)
        # Only to send: the worker's app is its own module, in its own process.
        self.app = Celery("survival_sender", broker=redis_url, set_as_current=False)
        self.redis = Redis.from_url(redis_url)
        self.ids: dict[str, str] = {}
        self.backlog: list[str] = []

    def send(self, label: str, task: str, seconds: float) -> None:
        self.ids[label] = self.app.send_task(task, (seconds,), queue=self.queue).id

    def started(self, task_id: str) -> float | None:
        path = self.marks / f"started-{task_id}"
        return path.stat().st_mtime if path.exists() else None

    def run(self, in_hand: dict[str, tuple[str, float]], backlog: int) -> tuple[dict, dict, dict]:
        """The jobs `in_hand` running, `backlog` more queued behind them, then the stop; the fates."""
        try:
            for label, (task, seconds) in in_hand.items():
                self.send(f"{label} job", task, seconds)
            wait_for(lambda: all(self.started(i) for i in self.ids.values()), 90, "every job in hand running")
            with self.app.producer_or_acquire() as producer:
                self.backlog = [self.app.send_task("work", (SHORT,), queue=self.queue, producer=producer).id
                                for _ in range(backlog)]
            self.ready.touch()
            stopped_at = self.ready.stat().st_mtime
            try:
                wait_for(lambda: STOP_SEEN in self.log.read_bytes(), 10, "the worker's warm shutdown")
            except AssertionError:
                pass  # a worker that ignores its stop: the fates show what it did instead
            finally:
                (self.log.parent / "stopped.flag").touch()
            result = finish(self.proc)
            fates = {label: self.fate(task_id, stopped_at) for label, task_id in self.ids.items()}
            backlog_fates = Counter(self.fate(task_id, stopped_at) for task_id in self.backlog)
            fates[f"backlog of {backlog}"] = ", ".join(f"{n} {fate}" for fate, n in sorted(backlog_fates.items()))
            ids = {**self.ids, **{f"backlog {n}": task_id for n, task_id in enumerate(self.backlog)}}
            every = {label: self.fate(task_id, stopped_at) for label, task_id in ids.items()}
            return fates, result, {"ids": ids, "fates": every, "marks": str(self.marks), "log": str(self.log)}
        finally:
            self.close()

    def started_after_the_stop(self, task_id: str, stopped_at: float) -> bool:
        """Under graceshell: its stop notice existed when the task began. Bare: the task began after
        the test asked the drill for the stop (which may reach the worker a little later)."""
        started = self.started(task_id)
        if started is None:
            return False
        if self.wrapped:
            return (self.marks / f"started-{task_id}").read_text() == "after the stop"
        return started > stopped_at

    def fate(self, task_id: str, stopped_at: float) -> str:
        started = self.started(task_id)
        if self.started_after_the_stop(task_id, stopped_at):
            return "started after the stop"
        if (self.marks / f"done-{task_id}").exists():
            return "completed"
        key = task_id.encode()
        if any(key in message for message in self.redis.lrange(self.queue, 0, -1)):
            return "queued" if started is None else "requeued"
        if any(key in message for message in self.redis.hvals(f"{self.queue}:unacked")):
            return "unacked (back after the visibility timeout)"
        return "lost"

    def close(self) -> None:
        stop_drill(self.proc)
        self.redis.delete(self.queue, f"{self.queue}:unacked", f"{self.queue}:unacked_index")
        self.redis.close()
        self.app.close()


def backlog_for(concurrency: int) -> int:
    """More than the worker may prefetch, so some of it is still in Redis's queue at the stop."""
    return PREFETCH_MULTIPLIER * concurrency + 2


POOL_IN_HAND = {"short": SHORT_IN_HAND, "long": ("work", LONG), "long acks_late": ("work_late", LONG)}


SOFT_SHUTDOWN_S = 30.0  # a user's setting, longer than any platform's grace
SLOW_COLD_SHUTDOWN_S = 6.0  # twice the cold step's reserve: graceshell's KILL comes first
CELLS: dict[str, dict[str, Any]] = {
    **{pool: {"pool": pool, "concurrency": 3, "in_hand": POOL_IN_HAND} for pool in POOLS},
    **{f"solo {label}": {"pool": "solo", "concurrency": 1, "in_hand": {label: SOLO_IN_HAND[label]}}
       for label in SOLO_IN_HAND},
    "prefork soft shutdown": {"pool": "prefork", "concurrency": 2, "soft_shutdown": SOFT_SHUTDOWN_S,
                              "in_hand": {"short": SHORT_IN_HAND, "long acks_late": ("work_late", LONG)}},
    "prefork slow cold shutdown": {"pool": "prefork", "concurrency": 2, "slow_cold_shutdown": SLOW_COLD_SHUTDOWN_S,
                                   "in_hand": {"long": ("work", LONG), "long acks_late": ("work_late", LONG)}},
}


def model_of(cell: str) -> str:
    spec = CELLS[cell]
    if spec["pool"] == "solo":
        return f"solo, {cell.removeprefix('solo ')} job in hand"
    soft = f", worker_soft_shutdown_timeout {SOFT_SHUTDOWN_S:g}s" if "soft_shutdown" in spec else ""
    slow = f", a cold shutdown of {SLOW_COLD_SHUTDOWN_S:g}s" if "slow_cold_shutdown" in spec else ""
    return f"{spec['pool']} -c {spec['concurrency']}{soft}{slow}"


def stop_once(tmp: Path, redis_url: str, cell: str, broadcast: str, wrapped: bool) -> tuple[dict, dict, dict]:
    spec = CELLS[cell]
    worker = Cell(tmp, redis_url, spec["pool"], spec["concurrency"], broadcast, wrapped, spec.get("soft_shutdown"),
                  spec.get("slow_cold_shutdown"))
    return worker.run(spec["in_hand"], backlog_for(spec["concurrency"]))


@scenarios_of("celery")
def celery_scenarios(tmp_path_factory, redis_url: str) -> dict:
    return {(cell, broadcast, wrapped): (lambda c=cell, b=broadcast, w=wrapped: stop_once(
                tmp_path_factory.mktemp(f"celery-{c.replace(' ', '-')}-{b}-{int(w)}"), redis_url, c, b, w))
            for cell in CELLS for broadcast in BROADCASTS for wrapped in WRAPPED}


@pytest.fixture
def celery_stops(framework_stops):
    return framework_stops["celery"]


# What a job may become, best first: under graceshell no job may end lower than bare.
RANK = {"completed": 0, "requeued": 1, "queued": 1, "unacked (back after the visibility timeout)": 2,
        "lost": 3, "started after the stop": 4}


def judged(stops: dict, cell: str, broadcast: str, wrapped: bool) -> tuple[dict, dict, dict]:
    fates, result, jobs = outcome_of(stops, (cell, broadcast, wrapped))
    record("celery", model_of(cell), broadcast, wrapped, fates, result)
    return fates, result, jobs


def assert_the_rule(stops: dict, cell: str, broadcast: str) -> None:
    """Under graceshell, in this cell: no job in hand worse than bare, the short job completed, the
    acks_late job back in its queue, the backlog left queued, every job not back named in the report."""
    from graceshell.commands.drill import render

    fates, result, jobs = judged(stops, cell, broadcast, True)
    _, _, bare = outcome_of(stops, (cell, broadcast, False))
    picture = f"{fates}\n{render(result, tty=False)}"  # what a failure shows
    every = jobs["fates"]
    in_hand = [label for label in every if not label.startswith("backlog")]
    worse = {label: (every[label], bare["fates"][label]) for label in in_hand
             if RANK[every[label]] > RANK[bare["fates"][label]]}
    assert worse == {}, picture
    assert result["platform_killed"] == [], picture
    if "short job" in every:
        assert every["short job"] == "completed", picture
    if "long acks_late job" in every:
        assert every["long acks_late job"] == "requeued", picture
    backlog = {label: fate for label, fate in every.items() if label.startswith("backlog")}
    # The backlog stays queued: no task starts after the stop (the prefetched
    # ones no slot started go back at the warm stop, and a slot that takes
    # one later gives it back instead), and none is left "unacked" for a
    # cold shutdown that outlasts its reserve.
    assert set(backlog.values()) == {"queued"}, picture
    reported = {orphan["id"] for orphan in result["orphaned_jobs"]}
    done = {label for label in every if (Path(jobs["marks"]) / f"done-{jobs['ids'][label]}").exists()}
    unreported = {label for label, fate in every.items()
                  if fate not in ("requeued", "queued") and label not in done and jobs["ids"][label] not in reported}
    assert unreported == set(), picture


@pytest.mark.parametrize("broadcast", BROADCASTS)
@pytest.mark.parametrize("pool", POOLS)
def test_celery_pool_never_worse_than_bare(celery_stops, pool, broadcast):
    judged(celery_stops, pool, broadcast, False)
    assert_the_rule(celery_stops, pool, broadcast)


@pytest.mark.parametrize("broadcast", BROADCASTS)
@pytest.mark.parametrize("in_hand", list(SOLO_IN_HAND))
def test_celery_solo_backlog_stays_queued(celery_stops, in_hand, broadcast):
    """The solo pool runs tasks in the main process, where it also sends
    worker_process_init: the integration must not take it for a pool
    process. Bare, the warm shutdown ends after the task in hand and the
    backlog stays queued; under graceshell too."""
    cell = f"solo {in_hand}"
    fates, _, _ = judged(celery_stops, cell, broadcast, False)
    assert fates[f"backlog of {backlog_for(1)}"] == f"{backlog_for(1)} queued", fates
    assert_the_rule(celery_stops, cell, broadcast)


@pytest.mark.parametrize("broadcast", BROADCASTS)
def test_celery_prefork_soft_shutdown_ends_before_the_kill(celery_stops, broadcast):
    """A user's worker_soft_shutdown_timeout, longer than the cold step's
    reserve, must not carry Celery's cold shutdown past graceshell's KILL."""
    import json

    from graceshell.config.presets import PRESETS

    judged(celery_stops, "prefork soft shutdown", broadcast, False)
    assert_the_rule(celery_stops, "prefork soft shutdown", broadcast)  # the backlog went back: not cut
    _, _, jobs = outcome_of(celery_stops, ("prefork soft shutdown", broadcast, True))
    lines = Path(jobs["log"]).read_text().splitlines()
    (fitted,) = [json.loads(line[line.index("{"):]) for line in lines if "graceshell.celery.soft_shutdown_fitted" in line]
    assert fitted["configured_s"] == SOFT_SHUTDOWN_S
    # Celery waits no longer than the KILL leaves after its own cold shutdown.
    assert fitted["fitted_s"] == max(0.0, round(fitted["kill_in_s"] - PRESETS["celery"].cold_floor, 3)), fitted


@pytest.mark.parametrize("broadcast", BROADCASTS)
def test_celery_prefork_slow_cold_shutdown_gives_back_the_prefetched(celery_stops, broadcast):
    """A cold shutdown that outlasts its reserve ends in graceshell's KILL
    before Celery closes its broker connection, which is where Celery alone
    puts its prefetched tasks back: they must already be in the queue."""
    cell = "prefork slow cold shutdown"
    judged(celery_stops, cell, broadcast, False)
    _, result, _ = outcome_of(celery_stops, (cell, broadcast, True))
    assert result["outcome"] == "killed", result  # the cold shutdown did outlast its reserve
    assert_the_rule(celery_stops, cell, broadcast)
