"""RQ's execution models through a real platform stop, on redis-server:
SimpleWorker (jobs in the worker's own process), SpawnWorker (a
posix_spawn'ed horse), `rq worker-pool` (several workers under one
process), `--with-scheduler` (a scheduler process beside the worker) and a
user's own `--worker-class`, bare and under graceshell with the rq preset.
tests/test_survival.py has RQ's default Worker.

Each cell runs a short job (fits in the warm phase), a long one (does not,
and has a Retry(max=1) it must not use up) and a job left waiting in the
queue behind the short one (the worker must not start it after the stop).
A one-job-at-a-time worker runs the short job and the long one in two
drills side by side; the pool runs both in one. Every drill runs at once
(conftest's `framework_stops`); each test reads its own.
"""

import contextlib
import textwrap

import pytest

from conftest import clean_env, run_cli, wait_for
from survival_helpers import BIN, LONG, SHORT, drill, finish, outcome_of, record, scenarios_of, stop_drill

pytest.importorskip("rq")

JOBS = """
import os, time

def work(seconds, label):
    marks = os.environ["MARKS_DIR"]
    open(os.path.join(marks, "started-" + label), "w").close()
    # Its time counts from the moment the worker took the stop, however long
    # a loaded machine takes to get there: the job must be running then.
    while label != "long" and not os.path.exists(os.environ["STOPPED_FLAG"]):
        time.sleep(0.01)
    time.sleep(seconds)
    open(os.path.join(marks, "done-" + label), "w").close()


def record_failure(job, connection, kind, value, traceback):
    open(os.path.join(os.environ["MARKS_DIR"], "on_failure-" + job.args[1]), "w").close()
"""

# A user's own worker class; under graceshell the user adds graceshell's
# mixin in front of it (`graceshell check` says so when -w names another).
CUSTOM_WORKERS = """
from rq.worker import Worker

from graceshell.integrations.rq import WorkerMixin


class AuditWorker(Worker):
    jobs_seen = 0

    def perform_job(self, job, queue, *args, **kwargs):
        AuditWorker.jobs_seen += 1
        return super().perform_job(job, queue, *args, **kwargs)


class GracefulAuditWorker(WorkerMixin, AuditWorker):
    pass
"""

# model -> (the rq command after `rq`, bare; under graceshell), and whether one
# worker process runs several jobs at once (then one drill holds the cell).
MODELS = {
    "SimpleWorker": (["worker", "-w", "rq.worker.SimpleWorker"],
                     ["worker", "-w", "graceshell.integrations.rq.SimpleWorker"]),
    "SpawnWorker": (["worker", "-w", "rq.worker.SpawnWorker"],
                    ["worker", "-w", "graceshell.integrations.rq.SpawnWorker"]),
    "worker-pool -n 2": (["worker-pool", "-n", "2"], ["worker-pool", "-n", "2"]),
    "Worker --with-scheduler": (["worker", "--with-scheduler"], ["worker", "--with-scheduler"]),
    "own --worker-class": (["worker", "-w", "custom_workers.AuditWorker"],
                           ["worker", "-w", "custom_workers.GracefulAuditWorker"]),
}
POOLED = {"worker-pool -n 2"}
BROADCASTS = ("all", "group")


def drills_of(model: str) -> list[tuple[str, ...]]:
    """The jobs each drill of a cell runs: both in one pool, else one drill each."""
    return [("short", "long")] if model in POOLED else [("short",), ("long",)]


SCENARIOS = [(model, broadcast, wrapped, labels) for model in MODELS for broadcast in BROADCASTS
             for wrapped in (True, False) for labels in drills_of(model)]


def fate(job, marks, label: str) -> str:
    if (marks / f"done-{label}").exists():
        return "completed"
    job.refresh()
    status = str(getattr(job.get_status(), "value", job.get_status()))
    if status == "queued":
        return "requeued" if (marks / f"started-{label}").exists() else "queued"
    if status == "started":  # left behind by a killed worker: RQ's cleanup of abandoned jobs takes it
        if job.retries_left:
            return "unacked (back after RQ's abandoned-job cleanup, the job timeout + 60 s, using up a retry)"
        return "lost"
    return status  # "failed", "stopped", "scheduled"...


def warm_stops(tmp_path) -> int:
    """How many workers have logged RQ's warm shutdown (base.py handle_warm_shutdown_request)."""
    return (tmp_path / "drill.stderr").read_text(errors="replace").count("warm shut down requested")


def stop_once(tmp_path, redis_url: str, model: str, broadcast: str, wrapped: bool, labels: tuple[str, ...]
              ) -> tuple[dict, dict, dict, dict]:
    """One drill: the jobs `labels` running at the stop (and one waiting
    behind the short job); their fates, the verdict, their ids, and what
    became of the long job's Retry and on_failure callback."""
    from redis import Redis
    from rq import Callback, Queue, Retry

    queue_name = f"survival-{tmp_path.name}"
    marks = tmp_path / "marks"
    marks.mkdir(parents=True)
    (tmp_path / "survival_jobs.py").write_text(textwrap.dedent(JOBS))
    (tmp_path / "custom_workers.py").write_text(textwrap.dedent(CUSTOM_WORKERS))
    env = clean_env(PYTHONPATH=str(tmp_path), MARKS_DIR=str(marks), STOPPED_FLAG=str(tmp_path / "stopped.flag"))
    command = MODELS[model][int(wrapped)]
    args = ["--broadcast", broadcast, "--preset", "rq", *([] if wrapped else ["--no-wrap"]), "--",
            str(BIN / "rq"), *command, "--url", redis_url, queue_name]
    with open(tmp_path / "drill.stderr", "wb") as stderr:  # the workers' output and graceshell's log
        proc = drill(tmp_path, args, env, stderr=stderr)
    redis = Redis.from_url(redis_url)
    queue = Queue(queue_name, connection=redis)
    try:
        sent = {}
        for label in labels:
            seconds, retry = (SHORT, None) if label == "short" else (LONG, Retry(max=1))
            sent[label] = queue.enqueue("survival_jobs.work", seconds, label, job_timeout=600, retry=retry,
                                        on_failure=Callback("survival_jobs.record_failure"))
        wait_for(lambda: all((marks / f"started-{label}").exists() for label in labels), 60, f"{labels} running")
        if "short" in labels:  # free during the warm phase: it must not start this one
            sent["waiting"] = queue.enqueue("survival_jobs.work", SHORT, "waiting", job_timeout=600)
        (tmp_path / "ready.flag").touch()
        # Every worker's warm shutdown; bare RQ does not always log one (a pool
        # worker taking the group's TERM and its pool's SIGINT at once), so
        # 2 s after the first one will do.
        with contextlib.suppress(AssertionError):
            wait_for(lambda: warm_stops(tmp_path) or proc.poll() is not None, 30, "a worker's warm shutdown")
            wait_for(lambda: warm_stops(tmp_path) >= len(labels), 2, "every worker's warm shutdown")
        (tmp_path / "stopped.flag").touch()
        result = finish(proc)
        result["stderr"] = str(tmp_path / "drill.stderr")
        fates = {f"{label} job": fate(job, marks, label) for label, job in sent.items()}
        retries = {"long job retries left": sent["long"].retries_left,
                   "long job's on_failure ran": (marks / "on_failure-long").exists()} if "long" in sent else {}
        return fates, result, {label: job.id for label, job in sent.items()}, retries
    finally:
        stop_drill(proc)
        queue.empty()
        redis.close()


@scenarios_of("rq-models")
def rq_model_scenarios(tmp_path_factory, redis_url: str) -> dict:
    return {scenario: (lambda s=scenario: stop_once(
                tmp_path_factory.mktemp(f"rq-{s[0].split()[0]}-{s[1]}-{int(s[2])}-{'-'.join(s[3])}"), redis_url, *s))
            for scenario in SCENARIOS}


@pytest.fixture
def rq_stops(framework_stops):
    return framework_stops["rq-models"]


def cell(stops: dict, model: str, broadcast: str, wrapped: bool) -> tuple[dict, dict, dict, list, dict]:
    """A cell's drills put together: fates, ids, the long job's Retry and callback, each drill's verdict, and
    one verdict for the table."""
    fates, ids, retries, results = {}, {}, {}, []
    for labels in drills_of(model):
        its_fates, result, its_ids, its_retries = outcome_of(stops, (model, broadcast, wrapped, labels))
        fates.update(its_fates)
        ids.update(its_ids)
        retries.update(its_retries)
        results.append(result)
    combined = {"platform_killed": [pid for result in results for pid in result["platform_killed"]]}
    record("rq", model, broadcast, wrapped, fates, combined, **retries)
    return fates, ids, retries, results, combined


def assert_never_worse_than_bare(fates: dict, ids: dict, retries: dict, results: list, *,
                                 exits_by_itself: bool = True) -> None:
    """Under graceshell: the job that fits completed, the long one is back at
    once with its retry unused and named in the report, the waiting one was
    never started, and the platform killed nothing. `exits_by_itself`: the
    worker was gone before graceshell's KILL, too."""
    assert fates == {"short job": "completed", "long job": "requeued", "waiting job": "queued"}, results
    assert retries == {"long job retries left": 1, "long job's on_failure ran": False}, results
    orphans = [job for result in results for job in result["orphaned_jobs"]]
    (orphan,) = orphans
    assert orphan["id"] == ids["long"] and orphan["requeued"] is True and orphan["interrupted"] is True, orphans
    for result in results:
        assert result["platform_killed"] == [], result
        if exits_by_itself:
            assert result["outcome"] != "killed", result  # RQ's cold shutdown fits its reserve


@pytest.mark.parametrize("broadcast", BROADCASTS)
@pytest.mark.parametrize("wrapped", [True, False], ids=["graceshell", "bare"])
def test_rq_simpleworker_survives_a_platform_stop(rq_stops, broadcast, wrapped):
    """SimpleWorker runs the job in the worker's own process: RQ's cold
    shutdown would fail it there; graceshell's requeues it."""
    fates, ids, retries, results, _ = cell(rq_stops, "SimpleWorker", broadcast, wrapped)
    if wrapped:
        assert_never_worse_than_bare(fates, ids, retries, results)
    else:  # what graceshell improves on: the long job is left "started" by the platform's SIGKILL
        assert fates["long job"].startswith("unacked"), fates


@pytest.mark.parametrize("broadcast", BROADCASTS)
@pytest.mark.parametrize("wrapped", [True, False], ids=["graceshell", "bare"])
def test_rq_spawnworker_survives_a_platform_stop(rq_stops, broadcast, wrapped):
    fates, ids, retries, results, _ = cell(rq_stops, "SpawnWorker", broadcast, wrapped)
    if wrapped:
        assert_never_worse_than_bare(fates, ids, retries, results)


@pytest.mark.parametrize("broadcast", BROADCASTS)
@pytest.mark.parametrize("wrapped", [True, False], ids=["graceshell", "bare"])
def test_rq_worker_pool_survives_a_platform_stop(rq_stops, broadcast, wrapped):
    """`rq worker-pool` sends SIGINT to each worker at every TERM it gets;
    under graceshell only its cold step's is a cold shutdown."""
    fates, ids, retries, results, _ = cell(rq_stops, "worker-pool -n 2", broadcast, wrapped)
    if wrapped:
        # The pool looks at its workers once a second (WorkerPool.start): on a
        # loaded machine it may still be there at graceshell's KILL, its jobs
        # already back in the queue (asserted).
        assert_never_worse_than_bare(fates, ids, retries, results, exits_by_itself=False)


@pytest.mark.parametrize("broadcast", BROADCASTS)
@pytest.mark.parametrize("wrapped", [True, False], ids=["graceshell", "bare"])
def test_rq_with_scheduler_survives_a_platform_stop(rq_stops, broadcast, wrapped):
    fates, ids, retries, results, _ = cell(rq_stops, "Worker --with-scheduler", broadcast, wrapped)
    if wrapped:
        assert_never_worse_than_bare(fates, ids, retries, results)


@pytest.mark.parametrize("broadcast", BROADCASTS)
@pytest.mark.parametrize("wrapped", [True, False], ids=["graceshell", "bare"])
def test_rq_own_worker_class_survives_a_platform_stop(rq_stops, broadcast, wrapped):
    """A user's own class, with graceshell's WorkerMixin in front of it."""
    fates, ids, retries, results, _ = cell(rq_stops, "own --worker-class", broadcast, wrapped)
    if wrapped:
        assert_never_worse_than_bare(fates, ids, retries, results)


@pytest.mark.parametrize(("worker_class", "advice"), [
    ("rq.worker.SimpleWorker", "use -w graceshell.integrations.rq.SimpleWorker"),
    ("rq.SpawnWorker", "use -w graceshell.integrations.rq.SpawnWorker"),
    ("custom_workers.AuditWorker", "class AuditWorker(WorkerMixin, ...)"),
])
def test_rq_check_names_what_to_do_about_an_own_worker_class(tmp_path, worker_class, advice):
    """-w replaces the preset's RQ_WORKER_CLASS: `check` says how to keep graceshell's shutdown."""
    (tmp_path / "Procfile").write_text(f"worker: rq worker -w {worker_class} default\n")
    proc = run_cli("check", "--preset", "rq", "--platform", "heroku", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    warning = next(line for line in proc.stdout.splitlines() if f"-w {worker_class} replaces" in line)
    assert advice in warning and "RQ_WORKER_CLASS" in warning, warning


@pytest.mark.parametrize("worker_class", ["graceshell.integrations.rq.SimpleWorker",
                                          "graceshell.integrations.rq.Worker"])
def test_rq_check_accepts_graceshell_worker_classes(tmp_path, worker_class):
    (tmp_path / "Procfile").write_text(f"worker: rq worker-pool --worker-class={worker_class}\n")
    proc = run_cli("check", "--preset", "rq", "--platform", "heroku", cwd=tmp_path)
    assert proc.returncode == 0 and "replaces the rq preset" not in proc.stdout, proc.stdout


def test_rq_worker_takes_a_storm_of_stop_signals(graceshell, tmp_path, redis_url):
    """A pool worker gets the platform's TERM and its pool's SIGINT for each
    TERM the pool gets, all at once: none of them may crash the worker (a
    handler that imports re-enters a half-done import), and the job in hand
    finishes."""
    import os
    import signal
    import time

    import psutil
    from redis import Redis
    from rq import Queue

    marks = tmp_path / "marks"
    marks.mkdir()
    (tmp_path / "survival_jobs.py").write_text(textwrap.dedent(JOBS))
    (tmp_path / "stopped.flag").touch()
    env = clean_env(PYTHONPATH=str(tmp_path), MARKS_DIR=str(marks), STOPPED_FLAG=str(tmp_path / "stopped.flag"))
    run = graceshell("--platform", "none", "--budget", "20s", "--preset", "rq", "--", str(BIN / "rq"), "worker",
                     "--url", redis_url, "rq-storm", env=env)
    connection = Redis.from_url(redis_url)
    try:
        job = Queue("rq-storm", connection=connection).enqueue("survival_jobs.work", 2.0, "storm")
        wait_for(lambda: (marks / "started-storm").exists(), 30, "the job running")
        workers = [p for p in psutil.Process(run.pid).children(recursive=True) if "worker" in " ".join(p.cmdline())]
        (main,) = [p for p in workers if p.ppid() not in {w.pid for w in workers}]  # not its horse
        run.kill(signal.SIGTERM)
        wait_for(lambda: "graceshell.forward" in run.stderr(), 10, "graceshell's warm TERM")
        until = time.monotonic() + 1.0  # one at a time (a burst would merge into one pending signal)
        with contextlib.suppress(ProcessLookupError):  # gone: a crash, which the asserts below show
            while time.monotonic() < until:
                os.kill(main.pid, signal.SIGINT)
                time.sleep(0.002)
        assert run.wait(30) == 0, run.stderr()
        assert job.get_status(refresh=True) == "finished" and "Traceback" not in run.stderr(), run.stderr()
    finally:
        Queue("rq-storm", connection=connection).empty()
        connection.close()


def test_rq_check_names_an_rq_worker_class_from_the_environment(tmp_path):
    """The real environment wins over the preset's RQ_WORKER_CLASS, as -w does."""
    (tmp_path / "Procfile").write_text("worker: rq worker default\n")
    proc = run_cli("check", "--preset", "rq", "--platform", "heroku", cwd=tmp_path,
                   env=clean_env(RQ_WORKER_CLASS="rq.worker.SimpleWorker"))
    assert proc.returncode == 0, proc.stderr
    (warning,) = [line for line in proc.stdout.splitlines() if "replaces the rq preset" in line]
    assert "RQ_WORKER_CLASS=rq.worker.SimpleWorker from the environment" in warning, warning
    assert "use RQ_WORKER_CLASS=graceshell.integrations.rq.SimpleWorker" in warning, warning
