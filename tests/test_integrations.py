"""The Celery and RQ integrations record real tasks, on a real redis-server."""

import json
import subprocess
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import clean_env, wait_for

pytest.importorskip("celery")
pytest.importorskip("rq")

BIN = Path(sys.executable).parent


def ledger_ids(run) -> list[str]:
    jobs_dir = run.event("graceshell.start")["jobs_dir"]
    ids = []
    for name in os.listdir(jobs_dir):
        if name.endswith(".json") and not name.startswith("."):
            try:
                ids.append(json.loads((Path(jobs_dir) / name).read_text())["id"])
            except (OSError, ValueError):
                pass
    return ids


CELERY_APP = """
import os, time
from celery import Celery
import graceshell.integrations.celery  # noqa: F401

app = Celery("tasks_app", broker=os.environ["REDIS_URL"], backend=os.environ["REDIS_URL"])
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True)

@app.task(name="tests.sleep")
def sleep(seconds):
    time.sleep(seconds)
    return seconds
"""


def test_celery_tasks_are_recorded_and_a_killed_one_is_reported(graceshell, tmp_path, redis_url, monkeypatch):
    (tmp_path / "tasks_app.py").write_text(textwrap.dedent(CELERY_APP))
    env = clean_env(REDIS_URL=redis_url, PYTHONPATH=str(tmp_path))
    run = graceshell("--platform", "none", "--budget", "2s", "--", str(BIN / "celery"), "--workdir", str(tmp_path),
                     "-A", "tasks_app", "worker", "--pool", "prefork", "-c", "1", "--without-heartbeat",
                     "--without-mingle", "--without-gossip", "-l", "warning", env=env)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("REDIS_URL", redis_url)
    import tasks_app

    try:
        short = tasks_app.sleep.delay(0.1)
        assert short.get(timeout=60) == 0.1  # the worker is up, and the short task is done
        long = tasks_app.sleep.delay(60)
        wait_for(lambda: long.id in ledger_ids(run), 20, "the long task in the ledger")
        assert short.id not in ledger_ids(run)
        run.kill(signal.SIGTERM)
        assert run.wait(30) == 137
    finally:
        tasks_app.app.close()
    report = run.report()
    (job,) = report["orphaned_jobs"]
    assert job["id"] == long.id and job["name"] == "tests.sleep"
    assert job["pid"] != report["pid"]  # recorded in the pool process that ran it


RQ_JOBS = """
import time

def sleep(seconds):
    time.sleep(seconds)
    return seconds
"""


def test_rq_jobs_are_recorded_in_the_work_horse(graceshell, tmp_path, redis_url):
    from redis import Redis
    from rq import Queue

    (tmp_path / "rq_jobs.py").write_text(textwrap.dedent(RQ_JOBS))
    env = clean_env(PYTHONPATH=str(tmp_path))
    run = graceshell("--platform", "none", "--budget", "2s", "--", str(BIN / "rq"), "worker",
                     "-w", "graceshell.integrations.rq.Worker", "--url", redis_url, "gs-test", env=env)
    connection = Redis.from_url(redis_url)
    queue = Queue("gs-test", connection=connection)
    short = queue.enqueue("rq_jobs.sleep", 0.1)
    wait_for(lambda: short.get_status(refresh=True) == "finished", 30, "the short job done")
    long = queue.enqueue("rq_jobs.sleep", 60)
    wait_for(lambda: long.id in ledger_ids(run), 20, "the long job in the ledger")
    run.kill(signal.SIGTERM)
    assert run.wait(30) == 137
    report = run.report()
    (job,) = report["orphaned_jobs"]
    assert (job["id"], job["name"], job["queue"]) == (long.id, "rq_jobs.sleep", "gs-test")
    assert job["pid"] != report["pid"]  # written in the work horse
    connection.close()


def test_an_rq_worker_leaving_does_not_wait_on_its_pubsub_thread(redis_url):
    """rq sends UNSUBSCRIBE, then stops redis-py's pubsub thread, whose stop()
    joins it. On a loaded machine the thread can read the reply first and go
    back to waiting up to 60 s (rq's sleep_time) for a subscription: the
    worker hung after its last job, until graceshell's cold step. That state,
    made on purpose here, must not hold the worker's exit."""
    import threading

    from redis import Redis

    from graceshell.integrations.rq import Worker

    worker = Worker(["gs-unsubscribe"], connection=Redis.from_url(redis_url))
    worker.subscribe()
    wait_for(lambda: worker.pubsub.subscribed, 10, "the pubsub thread subscribed")
    worker.pubsub.unsubscribe()  # the reply, read by the thread before anyone stopped it
    wait_for(lambda: not worker.pubsub.subscribed, 10, "the thread to read the unsubscribe reply")
    left = threading.Event()
    threading.Thread(target=lambda: (worker.unsubscribe(), left.set()), daemon=True).start()
    assert left.wait(10), "the worker's unsubscribe waited on its pubsub thread"


def test_a_worker_under_graceshell_can_read_the_notice_without_importing():
    """The integrations read the shutdown notice in signal handlers; a TERM that
    came while another handler imported the reader found it half made, and the
    worker process died (seen in a Dramatiq worker process). Under graceshell the
    reader is loaded with `graceshell.shutdown`; graceshell's own process is not."""
    probe = "import sys, graceshell.shutdown; print('graceshell.jsonfile' in sys.modules and 'json' in sys.modules)"
    under = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30,
                           env={**os.environ, "GRACESHELL_SHUTDOWN_FILE": "/nonexistent/shutdown.json"})
    outside = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30,
                             env={k: v for k, v in os.environ.items() if k != "GRACESHELL_SHUTDOWN_FILE"})
    assert (under.stdout.strip(), outside.stdout.strip()) == ("True", "False"), under.stderr + outside.stderr
