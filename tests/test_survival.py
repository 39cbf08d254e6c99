"""Real workers through a real platform stop: Celery and RQ on redis-server.

Each scenario runs `graceshell drill` the way the platform would stop the
worker (a broadcast to every process, as Heroku does, or a signal to the
process group), with a short job that fits in the warm phase and a long one
that does not. Under graceshell with its preset the goal must hold: the
short job completes, the long job is back in its queue, and nothing needed
the platform's SIGKILL. Bare runs are recorded, not asserted: they are the
problem graceshell exists for, and the table they make is in the README.
"""

import signal
import textwrap
import time
from pathlib import Path

import pytest

from conftest import clean_env, wait_for
from survival_helpers import BIN, LONG, SHORT, drill, finish, record, stop_drill

pytest.importorskip("celery")
pytest.importorskip("rq")

# -- Celery ---------------------------------------------------------------------------------

CELERY_APP = """
import os, time
from celery import Celery
# No import of graceshell.integrations.celery: Celery loads it as a command
# plugin, because graceshell is installed in the same environment.

app = Celery("survival_app", broker=os.environ["REDIS_URL"], backend=os.environ["REDIS_URL"])
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True,
                task_default_queue=os.environ["QUEUE"])

@app.task(name="survival.work", bind=True)
def work(self, seconds):
    marks = os.environ["MARKS_DIR"]
    open(os.path.join(marks, "started-" + self.request.id), "w").close()
    time.sleep(seconds)
    open(os.path.join(marks, "done-" + self.request.id), "w").close()
    return seconds
"""


def celery_fate(task_id: str, marks: Path, redis, queue: str) -> str:
    if (marks / f"done-{task_id}").exists():
        return "completed"
    if any(task_id.encode() in message for message in redis.lrange(queue, 0, -1)):
        return "requeued"
    if any(task_id.encode() in message for message in redis.hvals("unacked")):
        return "unacked (back after the visibility timeout)"
    return "lost"


@pytest.mark.parametrize("broadcast", ["all", "group"])
@pytest.mark.parametrize("wrapped", [True, False], ids=["graceshell", "bare"])
def test_celery_survives_a_platform_stop(tmp_path, redis_url, monkeypatch, broadcast, wrapped):
    from redis import Redis

    queue = f"survival-{broadcast}-{int(wrapped)}"
    module = f"survival_app_{broadcast}_{int(wrapped)}"  # one app per test: each is closed at its end
    marks = tmp_path / "marks"
    marks.mkdir()
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(CELERY_APP))
    env = clean_env(REDIS_URL=redis_url, PYTHONPATH=str(tmp_path), MARKS_DIR=str(marks), QUEUE=queue)
    for key, value in (("REDIS_URL", redis_url), ("MARKS_DIR", str(marks)), ("QUEUE", queue)):
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["--broadcast", broadcast, "--preset", "celery", *([] if wrapped else ["--no-wrap"]), "--",
            str(BIN / "celery"), "-A", module, "worker", "--pool", "prefork", "-c", "2",
            "--without-heartbeat", "--without-mingle", "--without-gossip", "-l", "info", "-Q", queue]
    proc = drill(tmp_path, args, env)
    import importlib

    survival_app = importlib.import_module(module)
    redis = Redis.from_url(redis_url)
    try:
        short = survival_app.work.delay(SHORT)
        long = survival_app.work.delay(LONG)
        wait_for(lambda: all((marks / f"started-{t.id}").exists() for t in (short, long)), 60, "both tasks running")
        (tmp_path / "ready.flag").touch()
        result = finish(proc)
        fates = {"short job": celery_fate(short.id, marks, redis, queue),
                 "long job": celery_fate(long.id, marks, redis, queue)}
    finally:
        stop_drill(proc)
        survival_app.app.close()
        redis.delete(queue, "unacked", "unacked_index")
        redis.close()
    record("celery", broadcast, wrapped, fates, result)
    if wrapped:
        assert fates == {"short job": "completed", "long job": "requeued"}, result
        assert result["platform_killed"] == [], result
        (orphan,) = result["orphaned_jobs"]  # named in the report, although it went back
        assert orphan["id"] == long.id and orphan["requeued"] is True and orphan["interrupted"] is True
        assert result["survived"] is False  # a job did not fit: the drill says so


# -- RQ ---------------------------------------------------------------------------------------

RQ_JOBS = """
import os, time

def work(seconds):
    marks = os.environ["MARKS_DIR"]
    from rq import get_current_job
    job_id = get_current_job().id
    open(os.path.join(marks, "started-" + job_id), "w").close()
    time.sleep(seconds)
    open(os.path.join(marks, "done-" + job_id), "w").close()
    return seconds
"""


def rq_fate(job) -> str:
    status = job.get_status(refresh=True)
    return {"finished": "completed", "queued": "requeued", "failed": "failed",
            "started": "stuck as started"}.get(str(getattr(status, "value", status)), str(status))


@pytest.mark.parametrize("length", [SHORT, LONG], ids=["short", "long"])
@pytest.mark.parametrize("broadcast", ["all", "group"])
@pytest.mark.parametrize("wrapped", [True, False], ids=["graceshell", "bare"])
def test_rq_survives_a_platform_stop(tmp_path, redis_url, broadcast, wrapped, length):
    from redis import Redis
    from rq import Queue

    queue_name = f"survival-{broadcast}-{int(wrapped)}-{int(length)}"
    marks = tmp_path / "marks"
    marks.mkdir()
    (tmp_path / "survival_jobs.py").write_text(textwrap.dedent(RQ_JOBS))
    env = clean_env(PYTHONPATH=str(tmp_path), MARKS_DIR=str(marks))
    args = ["--broadcast", broadcast, "--preset", "rq", *([] if wrapped else ["--no-wrap"]), "--",
            str(BIN / "rq"), "worker", "--url", redis_url, queue_name]
    proc = drill(tmp_path, args, env)
    redis = Redis.from_url(redis_url)
    try:
        job = Queue(queue_name, connection=redis).enqueue("survival_jobs.work", length, job_timeout=600)
        wait_for(lambda: (marks / f"started-{job.id}").exists(), 60, "the job running")
        (tmp_path / "ready.flag").touch()
        result = finish(proc)
        fate = rq_fate(job)
    finally:
        stop_drill(proc)
        redis.close()
    label = "short job" if length == SHORT else "long job"
    record("rq", broadcast, wrapped, {label: fate}, result)
    if wrapped:
        assert fate == ("completed" if length == SHORT else "requeued"), result
        assert result["platform_killed"] == [], result
        if length == LONG:
            (orphan,) = result["orphaned_jobs"]
            assert orphan["id"] == job.id and orphan["requeued"] is True
        assert result["survived"] is (length == SHORT)
