"""Dramatiq through a real platform stop, on redis-server: bare beside
graceshell with the dramatiq preset and its middleware module.

One worker process with two threads runs a short job (fits in the warm
phase) and a long one (does not). The four stops (TERM to every process or
to the process group, bare or under graceshell) run at once; each test
reads its own. Bare, the outcome varies from run to run: the worker
process gets the TERM twice (the platform's, and the main process's
forward of it), and takes them as one or as two depending on how close
together they come.
"""

import textwrap

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

@dramatiq.actor(actor_name="work", queue_name=os.environ["QUEUE"], max_retries=0, time_limit=600_000)
def work(seconds, label):
    marks = os.environ["MARKS_DIR"]
    open(os.path.join(marks, "started-" + label), "w").close()
    time.sleep(seconds)
    open(os.path.join(marks, "done-" + label), "w").close()
"""
SCENARIOS = [(broadcast, wrapped) for broadcast in ("all", "group") for wrapped in (True, False)]


def fate(redis, queue: str, message, marks, label: str) -> str:
    redis_id = message.options["redis_message_id"]  # the broker's own id of this delivery
    if (marks / f"done-{label}").exists():
        return "completed"
    if redis_id.encode() in redis.lrange(f"dramatiq:{queue}", 0, -1):
        return "requeued"
    if any(redis.sismember(key, redis_id) for key in redis.keys(f"dramatiq:__acks__.*.{queue}")):
        return "unacked (back after the 60 s heartbeat timeout)"
    return "lost"


def stop_once(tmp_path, redis_url: str, broadcast: str, wrapped: bool) -> tuple[dict, dict, dict]:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    queue = f"survival-{broadcast}-{int(wrapped)}"
    marks = tmp_path / "marks"
    marks.mkdir(parents=True)
    (tmp_path / "survival_dramatiq.py").write_text(textwrap.dedent(APP))
    env = clean_env(REDIS_URL=redis_url, PYTHONPATH=str(tmp_path), MARKS_DIR=str(marks), QUEUE=queue)
    modules = ["survival_dramatiq", *(["graceshell.integrations.dramatiq"] if wrapped else [])]
    args = ["--broadcast", broadcast, "--preset", "dramatiq", *([] if wrapped else ["--no-wrap"]), "--",
            str(BIN / "dramatiq"), *modules, "--processes", "1", "--threads", "2"]
    proc = drill(tmp_path, args, env)
    broker = RedisBroker(url=redis_url)
    try:
        sent = {label: broker.enqueue(dramatiq.Message(queue_name=queue, actor_name="work", args=(seconds, label),
                                                       kwargs={}, options={}))
                for label, seconds in (("short", SHORT), ("long", LONG))}
        wait_for(lambda: all((marks / f"started-{label}").exists() for label in sent), 60, "both jobs running")
        (tmp_path / "ready.flag").touch()
        result = finish(proc)
        fates = {f"{label} job": fate(broker.client, queue, message, marks, label)
                 for label, message in sent.items()}
        return fates, result, {label: message.message_id for label, message in sent.items()}
    finally:
        stop_drill(proc)
        broker.client.delete(f"dramatiq:{queue}", f"dramatiq:{queue}.msgs",
                             *broker.client.keys(f"dramatiq:__acks__.*.{queue}"))
        broker.close()


@scenarios_of("dramatiq")
def dramatiq_scenarios(tmp_path_factory, redis_url: str) -> dict:
    return {(broadcast, wrapped): (lambda b=broadcast, w=wrapped: stop_once(
                tmp_path_factory.mktemp(f"dramatiq-{b}-{int(w)}"), redis_url, b, w))
            for broadcast, wrapped in SCENARIOS}


@pytest.fixture
def dramatiq_stops(framework_stops):
    return framework_stops["dramatiq"]


@pytest.mark.parametrize("broadcast", ["all", "group"])
@pytest.mark.parametrize("wrapped", [True, False], ids=["graceshell", "bare"])
def test_dramatiq_survives_a_platform_stop(dramatiq_stops, broadcast, wrapped):
    fates, result, ids = outcome_of(dramatiq_stops, (broadcast, wrapped))
    record("dramatiq", "-p 1 -t 2", broadcast, wrapped, fates, result)
    if wrapped:
        assert_short_completed_long_requeued(fates, result, ids)


def test_dramatiq_integration_leaves_other_processes_alone(tmp_path):
    """A web process or script that imports the broker's module (and so the
    integration) keeps its own SIGTERM and gets no middleware, even when it
    runs under graceshell: only Dramatiq's worker processes are changed."""
    import subprocess
    import sys

    (tmp_path / "survival_dramatiq.py").write_text(textwrap.dedent(APP))
    probe = ("import signal, survival_dramatiq, dramatiq, graceshell.integrations.dramatiq; "
             "print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "
             "any(type(m).__name__ == 'GraceshellMiddleware' for m in dramatiq.get_broker().middleware))")
    env = clean_env(REDIS_URL="redis://127.0.0.1:1/0", QUEUE="unused", PYTHONPATH=str(tmp_path),
                    GRACESHELL_SHUTDOWN_FILE=str(tmp_path / "shutdown.json"))
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["True", "False"], out.stderr
