"""Dramatiq through a real platform stop, on redis-server: bare beside
graceshell with the dramatiq preset and its middleware module.

The cells of the matrix, each stopped by TERM to every process and to the
process group, bare and under graceshell, all at once (each test reads its
own):

- `-p 1 -t 2`: a short job (fits in the warm phase) and a long one (does not);
- `-p 1 -t 2 prefetch`: four long jobs, two running and two prefetched
  (Dramatiq takes 2 messages per worker thread ahead);
- `-p 1 -t 2 delayed, retry`: a short and a long job, a message delayed for
  later (eta) and a failed one waiting out its retry's backoff, both held in
  the consumer's delay queue;
- `-p 2 -t 2`: two worker processes, two short jobs started first and two
  long ones taken by whichever process fetches them (running, or waiting
  behind a short job).
- `--worker-shutdown-timeout 2000`: Dramatiq's own stop gives up first;
- `-p 1 -t 1`: a long job held behind a short one, the stop just before the
  short one ends (Dramatiq's thread would take the held job).

No job may start after its worker process took the stop: each job's mark
says when and in which process it started, the integration's
warm_shutdown event when that process took the stop.

Bare, the outcome varies from run to run: the worker process gets the TERM
twice (the platform's, and the main process's forward of it), and takes them
as one or as two depending on how close together they come.
"""

import json
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import clean_env, wait_for
from survival_helpers import (BIN, LONG, SHORT, assert_short_completed_long_requeued, drill,
                              finish, outcome_of, record, scenarios_of, stop_drill)

pytest.importorskip("dramatiq")

APP = """
import os, time
import dramatiq
from dramatiq.brokers.redis import RedisBroker

dramatiq.set_broker(RedisBroker(url=os.environ["REDIS_URL"]))
MARKS = os.environ["MARKS_DIR"]

@dramatiq.actor(actor_name="work", queue_name=os.environ["QUEUE"], max_retries=3, min_backoff=60_000,
                time_limit=600_000)
def work(seconds, label):
    with open(os.path.join(MARKS, "started-" + label), "w") as mark:
        mark.write(f"{time.time()} {os.getpid()}")
    time.sleep(seconds)
    open(os.path.join(MARKS, "done-" + label), "w").close()

@dramatiq.actor(actor_name="flaky", queue_name=os.environ["QUEUE"], max_retries=3, min_backoff=60_000,
                max_backoff=120_000)
def flaky(label):
    # Fails its first run, so its retry waits out a 60 s backoff in the delay queue.
    first = not os.path.exists(os.path.join(MARKS, "started-" + label))
    open(os.path.join(MARKS, "started-" + label), "w").close()
    if first:
        raise RuntimeError("the first run fails")
    open(os.path.join(MARKS, "done-" + label), "w").close()
"""
MODELS = {"basic": "-p 1 -t 2", "prefetch": "-p 1 -t 2 prefetch", "delayed": "-p 1 -t 2 delayed, retry",
          "processes": "-p 2 -t 2", "timeout": "-p 1 -t 2 --worker-shutdown-timeout 2000",
          "one-thread": "-p 1 -t 1 prefetch, the stop just before the short job ends"}
SCENARIOS = [(cell, broadcast, wrapped) for cell in MODELS for broadcast in ("all", "group")
             for wrapped in (True, False)]
# The -p 2 cell's short jobs: long enough to be running when the stop comes,
# after the long ones are fetched (an idle consumer looks once a second).
PROCESSES_SHORT = 3.0
UNACKED = "unacked (back after 60 s, at a live worker's maintenance)"


def locate(redis, queue: str, message_id: str) -> tuple[str, dict | None]:
    """Where a message is in the broker, by Dramatiq's id (a retry is a new
    Redis message with the same id): back in its queue or its delay queue,
    still in a (dead) worker's ack set, dead-lettered, or gone; and its options."""
    from dramatiq import Message

    for name in (queue, f"{queue}.DQ"):
        for redis_id, data in redis.hgetall(f"dramatiq:{name}.msgs").items():
            message = Message.decode(data)
            if message.message_id != message_id:
                continue
            if redis_id in redis.lrange(f"dramatiq:{name}", 0, -1):
                return "requeued", message.options
            if any(redis.sismember(key, redis_id) for key in redis.keys(f"dramatiq:__acks__.*.{name}")):
                return UNACKED, message.options
            return "in the broker, in no queue", message.options
    if any(Message.decode(data).message_id == message_id
           for data in redis.hgetall(f"dramatiq:{queue}.XQ.msgs").values()):
        return "failed (dead-lettered)", None
    return "lost", None


def fate(redis, queue: str, message_id: str, marks, label: str) -> str:
    if (marks / f"done-{label}").exists():
        return "completed"
    return locate(redis, queue, message_id)[0]


def events(log) -> list[dict]:
    """graceshell's events (its own and the integration's, JSON lines) in the drill's log."""
    lines = (line for line in log.read_text(errors="replace").splitlines() if line.startswith('{"event": "graceshell.'))
    return [json.loads(line) for line in lines]


def started(marks) -> set[str]:
    return {path.name[len("started-"):] for path in marks.glob("started-*")}


def started_after_the_stop(marks, log_events: list[dict]) -> set[str]:
    """The jobs a worker process started after it took the stop (its
    graceshell.dramatiq.warm_shutdown event; the marks say when and where
    each job started)."""
    stopped = {event["pid"]: event["stopped_at"]
               for event in log_events if event["event"] == "graceshell.dramatiq.warm_shutdown"}
    late = set()
    for path in marks.glob("started-*"):
        text = path.read_text().split()
        if len(text) == 2 and float(text[0]) > stopped.get(int(text[1]), float("inf")):
            late.add(path.name[len("started-"):])
    return late


class Cell:
    """One stop of one cell: its worker, broker and marks."""

    def __init__(self, tmp_path, redis_url: str, cell: str, broadcast: str, wrapped: bool) -> None:
        from dramatiq.brokers.redis import RedisBroker

        self.queue = f"survival-{cell}-{broadcast}-{int(wrapped)}"
        self.marks = tmp_path / "marks"
        self.marks.mkdir(parents=True)
        self.tmp = tmp_path
        (tmp_path / "survival_dramatiq.py").write_text(textwrap.dedent(APP))
        env = clean_env(REDIS_URL=redis_url, PYTHONPATH=str(tmp_path), MARKS_DIR=str(self.marks), QUEUE=self.queue)
        modules = ["survival_dramatiq", *(["graceshell.integrations.dramatiq"] if wrapped else [])]
        processes = "2" if cell == "processes" else "1"
        own_timeout = ["--worker-shutdown-timeout", "2000"] if cell == "timeout" else []
        threads = "1" if cell == "one-thread" else "2"
        args = ["--broadcast", broadcast, "--preset", "dramatiq", *([] if wrapped else ["--no-wrap"]), "--",
                str(BIN / "dramatiq"), *modules, "--processes", processes, "--threads", threads, *own_timeout]
        self.log = tmp_path / "drill.log"  # the workers' output and graceshell's log
        with self.log.open("wb") as log:
            self.proc = drill(tmp_path, args, env, stderr=log)
        self.broker = RedisBroker(url=redis_url)
        self.redis = self.broker.client
        self.sent: dict[str, str] = {}  # label -> Dramatiq's message id

    def send(self, label: str, actor: str = "work", args: tuple = (), delay: int | None = None) -> None:
        import dramatiq

        message = dramatiq.Message(queue_name=self.queue, actor_name=actor, args=args or (label,), kwargs={},
                                   options={})
        self.sent[label] = self.broker.enqueue(message, delay=delay).message_id

    def fetched(self, name: str | None = None) -> bool:
        """Every message of the queue (or delay queue `name`) taken by a worker."""
        return self.redis.llen(f"dramatiq:{name or self.queue}") == 0

    def stop(self) -> tuple[dict, dict]:
        """The platform's stop, once the cell is set; the fates and the drill's verdict."""
        (self.tmp / "ready.flag").touch()
        result = finish(self.proc)
        fates = {f"{label} job": fate(self.redis, self.queue, message_id, self.marks, label)
                 for label, message_id in self.sent.items()}
        return fates, result

    def close(self) -> None:
        stop_drill(self.proc)
        names = [self.queue, f"{self.queue}.DQ", f"{self.queue}.XQ"]
        self.redis.delete(*(f"dramatiq:{name}{suffix}" for name in names for suffix in ("", ".msgs")),
                          *(key for name in names for key in self.redis.keys(f"dramatiq:__acks__.*.{name}")))
        self.broker.close()


def set_up(cell: Cell, kind: str) -> None:
    """Send the cell's messages and wait until the worker holds them as the cell says."""
    marks = cell.marks
    if kind in ("basic", "timeout"):
        cell.send("short", args=(SHORT, "short"))
        cell.send("long", args=(LONG, "long"))
        wait_for(lambda: {"short", "long"} <= started(marks), 60, "both jobs running")
    elif kind == "one-thread":  # the long job waits (prefetched) for the thread the short one has
        cell.send("short", args=(SHORT, "short"))
        cell.send("long", args=(LONG, "long"))
        wait_for(lambda: "short" in started(marks) and cell.fetched(), 60, "the short job running, the long one held")
        short_started = float((marks / "started-short").read_text().split()[0])
        # Dramatiq stops its worker threads up to a second after the TERM: the
        # thread would be free for the long job in that second.
        time.sleep(max(0.0, short_started + SHORT - 0.4 - time.time()))
    elif kind == "prefetch":
        for n in range(4):
            cell.send(f"long{n}", args=(LONG, f"long{n}"))
        wait_for(lambda: cell.fetched() and len(started(marks)) == 2, 60, "two running, two prefetched")
    elif kind == "delayed":
        cell.send("retry", actor="flaky")
        cell.send("delayed", args=(SHORT, "delayed"), delay=60_000)
        wait_for(lambda: "retry" in started(marks) and cell.fetched(f"{cell.queue}.DQ")
                 and cell.redis.hlen(f"dramatiq:{cell.queue}.DQ.msgs") == 2, 60, "both in the delay queue")
        cell.send("short", args=(SHORT, "short"))
        cell.send("long", args=(LONG, "long"))
        wait_for(lambda: {"short", "long"} <= started(marks), 60, "both jobs running")
    else:  # two processes: the short jobs first, so they run; then the long ones, wherever they go
        cell.send("short0", args=(PROCESSES_SHORT, "short0"))
        cell.send("short1", args=(PROCESSES_SHORT, "short1"))
        wait_for(lambda: {"short0", "short1"} <= started(marks), 60, "both short jobs running")
        cell.send("long0", args=(LONG, "long0"))
        cell.send("long1", args=(LONG, "long1"))
        wait_for(cell.fetched, 60, "both long jobs fetched")
        time.sleep(0.3)  # a long job taken by a process with a free thread starts


def stop_once(tmp_path, redis_url: str, kind: str, broadcast: str, wrapped: bool) -> dict:
    cell = Cell(tmp_path, redis_url, kind, broadcast, wrapped)
    try:
        set_up(cell, kind)
        fates, result = cell.stop()
        options = {label: (locate(cell.redis, cell.queue, message_id)[1] or {}) for label, message_id in cell.sent.items()}
        log_events = events(cell.log)
        return {"fates": fates, "result": result, "ids": dict(cell.sent), "started": started(cell.marks),
                "started_late": started_after_the_stop(cell.marks, log_events), "options": options,
                "events": log_events}
    finally:
        cell.close()


@scenarios_of("dramatiq")
def dramatiq_scenarios(tmp_path_factory, redis_url: str) -> dict:
    return {scenario: (lambda s=scenario: stop_once(tmp_path_factory.mktemp("dramatiq-" + "-".join(map(str, s))),
                                                    redis_url, *s))
            for scenario in SCENARIOS}


@pytest.fixture
def dramatiq_stops(framework_stops):
    return framework_stops["dramatiq"]


def outcome(stops, cell: str, broadcast: str, wrapped: bool) -> dict:
    run = outcome_of(stops, (cell, broadcast, wrapped))
    record("dramatiq", MODELS[cell], broadcast, wrapped, run["fates"], run["result"])
    return run


def assert_the_rule(run: dict, *, completed: set[str], cut_short: set[str]) -> None:
    """Under graceshell: the jobs in `completed` finished, every other one is
    back in its queue, none started after the stop, the report names the
    jobs `cut_short` (requeued) and nothing else, and the platform killed nothing."""
    fates, result = run["fates"], run["result"]
    assert fates == {f"{label} job": "completed" if label in completed else "requeued" for label in run["ids"]}, result
    assert any(event["event"] == "graceshell.dramatiq.warm_shutdown" for event in run["events"]), run["events"]
    assert run["started_late"] == set(), "a job started after the stop"
    assert {job["id"] for job in result["orphaned_jobs"]} == {run["ids"][label] for label in cut_short}, result
    assert all(job["requeued"] is True and job["interrupted"] is True for job in result["orphaned_jobs"]), result
    assert result["platform_killed"] == [], result


@pytest.mark.parametrize("broadcast", ["all", "group"])
@pytest.mark.parametrize("wrapped", [True, False], ids=["graceshell", "bare"])
def test_dramatiq_survives_a_platform_stop(dramatiq_stops, broadcast, wrapped):
    run = outcome(dramatiq_stops, "basic", broadcast, wrapped)
    if wrapped:
        assert_short_completed_long_requeued(run["fates"], run["result"], run["ids"])
        # Dramatiq's 10 minutes for Worker.stop end before graceshell's KILL (budget 8 s).
        (stop,) = [e for e in run["events"] if e["event"] == "graceshell.dramatiq.warm_shutdown"]
        assert stop["given_timeout_ms"] == 600_000 and 0 < stop["timeout_ms"] <= 8000 - 1500


@pytest.mark.parametrize("broadcast", ["all", "group"])
@pytest.mark.parametrize("wrapped", [True, False], ids=["graceshell", "bare"])
def test_dramatiq_own_shutdown_timeout_ends_first(dramatiq_stops, broadcast, wrapped):
    """--worker-shutdown-timeout 2000: Dramatiq's own stop gives up on the
    long job 2 s in, before graceshell's cold step, and exits; the long job
    goes back to its queue then and is in the report. Bare it stays unacked."""
    run = outcome(dramatiq_stops, "timeout", broadcast, wrapped)
    if wrapped:
        assert_short_completed_long_requeued(run["fates"], run["result"], run["ids"])
        assert any(e["event"] == "graceshell.dramatiq.requeued_after_stop" for e in run["events"])
        assert not any(e["event"] == "graceshell.dramatiq.cold_shutdown" for e in run["events"])
    elif not run["result"]["platform_killed"]:
        assert run["fates"]["long job"] == UNACKED


@pytest.mark.parametrize("broadcast", ["all", "group"])
@pytest.mark.parametrize("wrapped", [True, False], ids=["graceshell", "bare"])
def test_dramatiq_prefetch_every_message_held_goes_back(dramatiq_stops, broadcast, wrapped):
    """Two threads, four long jobs: two run, two wait in the worker process
    (prefetched). At the cold step all four go back to the queue; the two
    that ran are in the report. Bare, those the process holds stay in its ack set."""
    run = outcome(dramatiq_stops, "prefetch", broadcast, wrapped)
    if wrapped:
        assert len(run["started"]) == 2
        assert_the_rule(run, completed=set(), cut_short=run["started"])
    elif not run["result"]["platform_killed"]:  # not the platform's SIGKILL: Dramatiq's own "exit now"
        assert UNACKED in run["fates"].values()


@pytest.mark.parametrize("broadcast", ["all", "group"])
@pytest.mark.parametrize("wrapped", [True, False], ids=["graceshell", "bare"])
def test_dramatiq_delayed_and_retry_messages_go_back_with_their_retries(dramatiq_stops, broadcast, wrapped):
    """A message delayed for later and a retry waiting out its backoff are held
    in the consumer's delay queue: at the cold step they go back to the delay
    queue, and no message has used up a retry (the long job was never failed,
    the retry keeps the one its first run used)."""
    run = outcome(dramatiq_stops, "delayed", broadcast, wrapped)
    if wrapped:
        assert_the_rule(run, completed={"short"}, cut_short={"long"})
        assert run["options"]["long"].get("retries", 0) == 0
        assert run["options"]["retry"]["retries"] == 1
    else:
        assert run["fates"]["delayed job"] == UNACKED and run["fates"]["retry job"] == UNACKED


@pytest.mark.parametrize("broadcast", ["all", "group"])
@pytest.mark.parametrize("wrapped", [True, False], ids=["graceshell", "bare"])
def test_dramatiq_processes_and_threads(dramatiq_stops, broadcast, wrapped):
    """Two worker processes of two threads: the short jobs finish, the long
    ones go back (running, or waiting behind a short job, which they may not
    start after the stop)."""
    run = outcome(dramatiq_stops, "processes", broadcast, wrapped)
    if wrapped:
        assert_the_rule(run, completed={"short0", "short1"}, cut_short=run["started"] & {"long0", "long1"})


@pytest.mark.parametrize("broadcast", ["all", "group"])
@pytest.mark.parametrize("wrapped", [True, False], ids=["graceshell", "bare"])
def test_dramatiq_one_thread_starts_no_held_message_after_the_stop(dramatiq_stops, broadcast, wrapped):
    """One thread: the stop comes just before the short job ends, with the
    long one held. Dramatiq's worker process stops its threads only up to a
    second after the TERM, and in that second its free thread took the held
    message. Under graceshell it goes back untouched. (On a loaded machine the
    short job may end before the stop: then the long one starts before it,
    and goes back at the cold step.)"""
    run = outcome(dramatiq_stops, "one-thread", broadcast, wrapped)
    if wrapped:
        assert_the_rule(run, completed={"short"}, cut_short=run["started"] - {"short"})


def test_dramatiq_integration_leaves_other_processes_alone(tmp_path):
    """A web process or script that imports the broker's module (and so the
    integration) keeps its own SIGTERM and gets no middleware, even when it
    runs under graceshell: only Dramatiq's worker processes are changed."""
    (tmp_path / "survival_dramatiq.py").write_text(textwrap.dedent(APP))
    probe = ("import signal, survival_dramatiq, dramatiq, graceshell.integrations.dramatiq; "
             "print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "
             "any(type(m).__name__ == 'GraceshellMiddleware' for m in dramatiq.get_broker().middleware))")
    env = clean_env(REDIS_URL="redis://127.0.0.1:1/0", QUEUE="unused", PYTHONPATH=str(tmp_path),
                    MARKS_DIR=str(tmp_path), GRACESHELL_SHUTDOWN_FILE=str(tmp_path / "shutdown.json"))
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["True", "False"], out.stderr
