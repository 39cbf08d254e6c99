"""arq through a real platform stop, on redis-server: the bare `arq`
command beside graceshell with the arq preset and its drop-in command.

arq needs a redis-py older than Celery's, so its worker (and the script
that enqueues its jobs) runs from an environment of its own, .venv-arq,
which `make test` creates; graceshell and the drill run from this one.

One worker runs a short job (fits in the warm phase) and a long one (does
not). The four stops (TERM to every process or to the process group, bare
or under graceshell) run at once; each test reads its own.
"""

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import clean_env, wait_for
from survival_helpers import (LONG, SHORT, assert_short_completed_long_requeued, drill, finish,
                              outcome_of, record, scenarios_of, stop_drill)

ARQ_BIN = Path(__file__).resolve().parents[1] / ".venv-arq" / "bin"

APP = """
import asyncio, os
from arq.connections import RedisSettings

async def work(ctx, seconds, label):
    marks = os.environ["MARKS_DIR"]
    open(os.path.join(marks, "started-" + label), "w").close()
    await asyncio.sleep(seconds)
    open(os.path.join(marks, "done-" + label), "w").close()

class WorkerSettings:
    functions = [work]
    redis_settings = RedisSettings.from_dsn(os.environ["REDIS_URL"])
    queue_name = os.environ["QUEUE"]
    job_timeout = 600
    poll_delay = 0.1
"""
SCENARIOS = [(broadcast, wrapped) for broadcast in ("all", "group") for wrapped in (True, False)]


def fate(redis, queue: str, job_id: str, marks, label: str) -> str:
    if (marks / f"done-{label}").exists():
        return "completed"
    if redis.exists(f"arq:result:{job_id}"):
        return "failed"
    if redis.zscore(queue, job_id) is None:
        return "lost"
    if redis.exists(f"arq:in-progress:{job_id}"):
        return "stuck in progress (until arq's in-progress timeout)"
    return "requeued"


ENQUEUE = """
import asyncio, json, sys
from arq import create_pool
from arq.connections import RedisSettings

async def enqueue(url, queue, jobs):
    pool = await create_pool(RedisSettings.from_dsn(url), default_queue_name=queue)
    try:
        return {label: (await pool.enqueue_job("work", seconds, label)).job_id for label, seconds in jobs}
    finally:
        await pool.aclose()

print(json.dumps(asyncio.run(enqueue(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))))
"""


def enqueue(redis_url: str, queue: str) -> dict:
    """The short and the long job, enqueued by arq's own client; their ids."""
    jobs = json.dumps([("short", SHORT), ("long", LONG)])
    out = subprocess.run([str(ARQ_BIN / "python"), "-c", ENQUEUE, redis_url, queue, jobs],
                         check=True, capture_output=True, timeout=60).stdout
    return json.loads(out)


def stop_once(tmp_path, redis_url: str, broadcast: str, wrapped: bool) -> tuple[dict, dict, dict]:
    from redis import Redis

    queue = f"survival-{broadcast}-{int(wrapped)}"
    marks = tmp_path / "marks"
    marks.mkdir(parents=True)
    (tmp_path / "survival_arq.py").write_text(textwrap.dedent(APP))
    env = clean_env(REDIS_URL=redis_url, PYTHONPATH=str(tmp_path), MARKS_DIR=str(marks), QUEUE=queue)
    worker = [str(ARQ_BIN / "python"), "-m", "graceshell.integrations.arq"] if wrapped else [str(ARQ_BIN / "arq")]
    args = ["--broadcast", broadcast, "--preset", "arq", *([] if wrapped else ["--no-wrap"]), "--",
            *worker, "survival_arq.WorkerSettings"]
    proc = drill(tmp_path, args, env)
    redis = Redis.from_url(redis_url)
    ids: dict = {}
    try:
        ids = enqueue(redis_url, queue)
        wait_for(lambda: all((marks / f"started-{label}").exists() for label in ids), 60, "both jobs running")
        (tmp_path / "ready.flag").touch()
        result = finish(proc)
        fates = {f"{label} job": fate(redis, queue, job_id, marks, label) for label, job_id in ids.items()}
        return fates, result, ids
    finally:
        stop_drill(proc)
        redis.delete(queue, *(f"arq:{kind}:{job_id}" for job_id in ids.values()
                              for kind in ("job", "in-progress", "retry", "result")))
        redis.close()


def missing_environment() -> None:
    if os.environ.get("CI"):
        pytest.fail("the arq environment is missing: `make test` (or .ci/run) creates it")
    pytest.skip("the arq environment is missing: run `make .venv-arq/.installed`")


@scenarios_of("arq")
def arq_scenarios(tmp_path_factory, redis_url: str) -> dict:
    if not (ARQ_BIN / "arq").exists():
        return {scenario: missing_environment for scenario in SCENARIOS}
    return {(broadcast, wrapped): (lambda b=broadcast, w=wrapped: stop_once(
                tmp_path_factory.mktemp(f"arq-{b}-{int(w)}"), redis_url, b, w))
            for broadcast, wrapped in SCENARIOS}


@pytest.fixture
def arq_stops(framework_stops):
    return framework_stops["arq"]


@pytest.mark.parametrize("broadcast", ["all", "group"])
@pytest.mark.parametrize("wrapped", [True, False], ids=["graceshell", "bare"])
def test_arq_survives_a_platform_stop(arq_stops, broadcast, wrapped):
    fates, result, ids = outcome_of(arq_stops, (broadcast, wrapped))
    record("arq", "max_jobs 10", broadcast, wrapped, fates, result)
    if wrapped:
        assert_short_completed_long_requeued(fates, result, ids)
