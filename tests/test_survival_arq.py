"""arq through a real platform stop, on redis-server: the bare `arq`
command beside graceshell with the arq preset and its drop-in command.

arq needs a redis-py older than Celery's, so its worker (and the script
that enqueues its jobs) runs from an environment of its own, .venv-arq,
which `make test` creates; graceshell and the drill run from this one.

Two cells, each stopped by TERM to every process and to the process group,
bare and under graceshell, all at once (each test reads its own):

- `max_jobs 10`: a short job (fits in the warm phase) and a long one (does not);
- `max_jobs 4`: a short job and three long ones in flight, and a fifth job
  waiting in the queue for a free slot.
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
    with open(os.path.join(marks, "started-" + label), "w") as mark:
        mark.write(repr(__import__("time").time()))
    await asyncio.sleep(seconds)
    open(os.path.join(marks, "done-" + label), "w").close()

class WorkerSettings:
    functions = [work]
    redis_settings = RedisSettings.from_dsn(os.environ["REDIS_URL"])
    queue_name = os.environ["QUEUE"]
    job_timeout = 600
    poll_delay = 0.1
    max_jobs = int(os.environ["MAX_JOBS"])
"""
# The max_jobs 4 cell's short job: still running when the stop comes, so its
# slot is not free for the waiting job before the stop (four jobs start one by one).
BUSY_SHORT = 3.0
# cell -> (max_jobs, the jobs in flight at the stop, the jobs left waiting in the queue)
CELLS = {"max_jobs 10": (10, (("short", SHORT), ("long", LONG)), ()),
         "max_jobs 4": (4, (("short", BUSY_SHORT), ("long0", LONG), ("long1", LONG), ("long2", LONG)),
                        (("queued", LONG),))}
SCENARIOS = [(cell, broadcast, wrapped) for cell in CELLS for broadcast in ("all", "group")
             for wrapped in (True, False)]


def fate(redis, queue: str, job_id: str, marks, label: str) -> str:
    if (marks / f"done-{label}").exists():
        return "completed"
    if redis.exists(f"arq:result:{job_id}"):
        return "failed"
    if redis.zscore(queue, job_id) is None:
        return "lost"
    if redis.exists(f"arq:in-progress:{job_id}"):
        return "stuck in progress (until arq's in-progress timeout)"
    return "requeued" if (marks / f"started-{label}").exists() else "queued (never started)"


def started_after_the_stop(marks, log) -> set[str] | None:
    """The jobs the worker started after it took the stop (its
    graceshell.arq.warm_shutdown event; each job's mark says when it
    started); None without the event (bare)."""
    lines = [json.loads(line) for line in log.read_text(errors="replace").splitlines()
             if line.startswith('{"event": "graceshell.arq.warm_shutdown"')]
    if not lines:
        return None
    return {path.name[len("started-"):] for path in marks.glob("started-*")
            if float(path.read_text() or 0) > lines[0]["stopped_at"]}


def tries_used(redis, job_id: str) -> int:
    """The runs arq has counted against the job's max_tries (arq:retry:<id>, run_job)."""
    return int(redis.get(f"arq:retry:{job_id}") or 0)


ENQUEUE = """
import asyncio, json, sys
from arq import create_pool
from arq.connections import RedisSettings

async def enqueue(url, queue, jobs):
    pool = await create_pool(RedisSettings.from_dsn(url), default_queue_name=queue)
    try:
        return {label: (await pool.enqueue_job("work", seconds, label, _defer_by=defer)).job_id
                for label, seconds, defer in jobs}
    finally:
        await pool.aclose()

print(json.dumps(asyncio.run(enqueue(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))))
"""


def enqueue(redis_url: str, queue: str, in_flight: tuple, waiting: tuple) -> dict:
    """The jobs ((label, seconds), ...), enqueued by arq's own client; their
    ids. The waiting ones are deferred a little, so the worker, which reads
    the queue in order, fills its slots with the others."""
    jobs = json.dumps([(label, seconds, None) for label, seconds in in_flight]
                      + [(label, seconds, 0.3) for label, seconds in waiting])
    out = subprocess.run([str(ARQ_BIN / "python"), "-c", ENQUEUE, redis_url, queue, jobs],
                         check=True, capture_output=True, timeout=60).stdout
    return json.loads(out)


def stop_once(tmp_path, redis_url: str, cell: str, broadcast: str, wrapped: bool) -> tuple[dict, dict, dict, dict]:
    from redis import Redis

    max_jobs, in_flight, waiting = CELLS[cell]
    queue = f"survival-{max_jobs}-{broadcast}-{int(wrapped)}"
    marks = tmp_path / "marks"
    marks.mkdir(parents=True)
    (tmp_path / "survival_arq.py").write_text(textwrap.dedent(APP))
    env = clean_env(REDIS_URL=redis_url, PYTHONPATH=str(tmp_path), MARKS_DIR=str(marks), QUEUE=queue,
                    MAX_JOBS=str(max_jobs))
    worker = [str(ARQ_BIN / "python"), "-m", "graceshell.integrations.arq"] if wrapped else [str(ARQ_BIN / "arq")]
    args = ["--broadcast", broadcast, "--preset", "arq", *([] if wrapped else ["--no-wrap"]), "--",
            *worker, "survival_arq.WorkerSettings"]
    log = tmp_path / "drill.log"  # the worker's output and graceshell's log
    with log.open("wb") as stderr:
        proc = drill(tmp_path, args, env, stderr=stderr)
    redis = Redis.from_url(redis_url)
    ids: dict = {}
    try:
        ids = enqueue(redis_url, queue, in_flight, waiting)
        wait_for(lambda: all((marks / f"started-{label}").exists() for label, _ in in_flight), 60,
                 "the jobs running")
        (tmp_path / "ready.flag").touch()
        result = finish(proc)
        fates = {f"{label} job": fate(redis, queue, job_id, marks, label) for label, job_id in ids.items()}
        tries = {label: tries_used(redis, job_id) for label, job_id in ids.items()}
        return fates, result, ids, tries, started_after_the_stop(marks, log)
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
    return {scenario: (lambda s=scenario: stop_once(
                tmp_path_factory.mktemp("arq-" + "-".join(map(str, s)).replace(" ", "")), redis_url, *s))
            for scenario in SCENARIOS}


@pytest.fixture
def arq_stops(framework_stops):
    return framework_stops["arq"]


@pytest.mark.parametrize("broadcast", ["all", "group"])
@pytest.mark.parametrize("wrapped", [True, False], ids=["graceshell", "bare"])
def test_arq_survives_a_platform_stop(arq_stops, broadcast, wrapped):
    fates, result, ids, tries, _ = outcome_of(arq_stops, ("max_jobs 10", broadcast, wrapped))
    record("arq", "max_jobs 10", broadcast, wrapped, fates, result)
    if wrapped:
        assert_short_completed_long_requeued(fates, result, ids)
        assert tries["long"] == 0  # the cut-short run gave its try back: the next one is try 1 again
    else:
        assert tries["long"] == 1  # arq's own cancel counts the run against max_tries


@pytest.mark.parametrize("broadcast", ["all", "group"])
@pytest.mark.parametrize("wrapped", [True, False], ids=["graceshell", "bare"])
def test_arq_max_jobs_several_long_jobs_in_flight(arq_stops, broadcast, wrapped):
    """max_jobs 4, all four slots busy: the short job finishes, the three long
    ones go back with their tries given back and are in the report, and the
    job waiting for a slot does not start after the stop (it may start
    before it, when the short job ends first on a loaded machine: then it
    goes back like the others)."""
    fates, result, ids, tries, late = outcome_of(arq_stops, ("max_jobs 4", broadcast, wrapped))
    record("arq", "max_jobs 4", broadcast, wrapped, fates, result)
    if wrapped:
        assert late == set(), "a job started after the stop"
        cut_short = {"long0", "long1", "long2"} | ({"queued"} if fates["queued job"] != "queued (never started)"
                                                   else set())
        assert fates == {"short job": "completed", "queued job": fates["queued job"],
                         **{f"{label} job": "requeued" for label in cut_short}}, result
        assert result["platform_killed"] == [], result
        assert {job["id"] for job in result["orphaned_jobs"]} == {ids[label] for label in cut_short}, result
        assert all(job["requeued"] is True and job["interrupted"] is True for job in result["orphaned_jobs"])
        assert all(tries[label] == 0 for label in cut_short), tries
