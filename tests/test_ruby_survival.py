"""Real Ruby workers through a real platform stop: Sidekiq on redis-server and
delayed_job on SQLite, with Debian's packages (tools/install-test-deps).

Like test_survival.py, each scenario is a `graceshell drill` with a short
job that fits in the warm phase and a long one that does not, bare and
under graceshell with the framework's preset (whose Ruby file, loaded
through RUBYOPT, is the whole integration: the workers here are plain
Sidekiq and delayed_job). Under graceshell the goal must hold; bare runs
are recorded for docs/survival.md's table, not asserted.

A drill takes as long as the platform's timeout, so every selected scenario
of this module starts at once, at the first test that needs one; each test
then waits for its own.
"""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import clean_env, wait_for
from survival_helpers import record, stop_drill

SHORT, LONG = 3.0, 60.0
READY_TIMEOUT = 120.0  # Ruby boots slowly when every scenario starts at once on a busy machine


def ruby_missing() -> str | None:
    """What is missing to run the Ruby workers, or None."""
    if shutil.which("ruby") is None or shutil.which("sidekiq") is None:
        return "ruby and sidekiq"
    probe = subprocess.run(["ruby", "-e", 'require "sidekiq"; require "delayed_job_active_record"; require "sqlite3"'],
                           capture_output=True)
    return "Ruby libraries (sidekiq, delayed_job_active_record, sqlite3)" if probe.returncode else None


@pytest.fixture(scope="module")
def ruby_ready() -> None:
    missing = ruby_missing()
    if missing is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{missing} missing: .ci/run installs them (tools/install-test-deps)")
    pytest.skip(f"{missing} not installed (bash tools/install-test-deps)")


class Scenario:
    """One drill: a framework, the platform's timeout and stop model, bare or not."""

    def __init__(self, framework: str, timeout: int, broadcast: str, wrapped: bool, variant: str = "") -> None:
        self.framework, self.timeout, self.broadcast, self.wrapped, self.variant = \
            framework, timeout, broadcast, wrapped, variant

    @property
    def key(self) -> tuple:
        return self.framework, self.timeout, self.broadcast, self.wrapped, self.variant

    def drill(self, workdir: Path, argv: list[str], env: dict) -> subprocess.Popen:
        args = ["--platform", "heroku", "--platform-timeout", f"{self.timeout}s", "--json",
                "--when-ready", str(workdir / "ready.flag"), "--broadcast", self.broadcast,
                "--preset", self.framework, *([] if self.wrapped else ["--no-wrap"]), "--", *argv]
        with open(workdir / "drill.stderr", "wb") as err:
            return subprocess.Popen([sys.executable, "-m", "graceshell", "drill", *args], cwd=workdir, env=env,
                                    stdout=subprocess.PIPE, stderr=err)


def ruby_env(**extra: str) -> dict:
    """The test's environment without a RUBYOPT of its own, which would replace the preset's."""
    env = clean_env(**extra)
    env.pop("RUBYOPT", None)
    return env


def finish(proc: subprocess.Popen, workdir: Path) -> dict:
    out, _ = proc.communicate(timeout=120)
    try:
        return json.loads(out)
    except ValueError:
        raise AssertionError(f"no verdict from the drill: {(workdir / 'drill.stderr').read_text()[-3000:]}") from None


def started(proc: subprocess.Popen, marks: list[Path], workdir: Path) -> None:
    """Wait until every job has written its start mark; the drill must not end first."""
    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the worker ended before its jobs started: "
                                 f"{(workdir / 'drill.stderr').read_text()[-3000:]}")
        return all(mark.exists() for mark in marks)

    wait_for(ready, READY_TIMEOUT, "the jobs running")
    (workdir / "ready.flag").touch()


# -- Sidekiq ------------------------------------------------------------------------------------

SIDEKIQ_JOBS = """
require "sidekiq"

# A plain Sidekiq job: nothing in it knows about graceshell.
class SleepJob
  include Sidekiq::Worker
  sidekiq_options retry: false

  def perform(seconds)
    File.write(File.join(ENV.fetch("MARKS_DIR"), "started-#{jid}"), "")
    sleep seconds
    File.write(File.join(ENV.fetch("MARKS_DIR"), "done-#{jid}"), "")
  end
end

# A job with a retry to keep: a short one's time counts from the moment
# Sidekiq took the stop (the test's flag), however long a loaded machine
# takes to get there, so it is running then.
class GatedJob
  include Sidekiq::Worker
  sidekiq_options retry: 1

  def perform(seconds)
    File.write(File.join(ENV.fetch("MARKS_DIR"), "started-#{jid}"), "")
    sleep 0.01 until File.exist?(ENV.fetch("STOPPED_FLAG")) if seconds < 30
    sleep seconds
    File.write(File.join(ENV.fetch("MARKS_DIR"), "done-#{jid}"), "")
  end
end
"""


def sidekiq_enqueue(redis, queue: str, seconds: float, job_class: str = "SleepJob", retry: bool | int = False) -> str:
    """What Sidekiq::Client#push writes (lib/sidekiq/client.rb), without a Ruby start-up."""
    jid = uuid.uuid4().hex[:24]
    now = time.time()
    job = {"class": job_class, "args": [seconds], "jid": jid, "queue": queue, "retry": retry,
           "created_at": now, "enqueued_at": now}
    redis.sadd("queues", queue)
    redis.lpush(f"queue:{queue}", json.dumps(job))
    return jid


def sidekiq_fate(jid: str, marks: Path, redis, queue: str) -> str:
    if (marks / f"done-{jid}").exists():
        return "completed"
    if any(jid.encode() in job for job in redis.lrange(f"queue:{queue}", 0, -1)):
        return "requeued" if (marks / f"started-{jid}").exists() else "queued"
    if any(jid.encode() in job for job in redis.zrange("retry", 0, -1)):
        return "failed"  # in the retry set, a retry used up
    return "lost"


def sidekiq_retries_used(redis, queue: str, jids: list[str]) -> int:
    """How many of `jids` came back with a retry_count (Sidekiq's JobRetry counts one per failure)."""
    jobs = [json.loads(job) for job in redis.lrange(f"queue:{queue}", 0, -1)]
    jobs += [json.loads(job) for job in redis.zrange("retry", 0, -1)]
    return sum(1 for job in jobs if job.get("jid") in jids and "retry_count" in job)


def run_sidekiq(scenario: Scenario, workdir: Path, redis_url: str) -> dict:
    from redis import Redis

    marks = workdir / "marks"
    marks.mkdir(parents=True)
    (workdir / "jobs.rb").write_text(textwrap.dedent(SIDEKIQ_JOBS))
    queue = f"survival-{workdir.name}"
    redis = Redis.from_url(redis_url)
    try:
        short, long = sidekiq_enqueue(redis, queue, SHORT), sidekiq_enqueue(redis, queue, LONG)
        env = ruby_env(REDIS_URL=redis_url, MARKS_DIR=str(marks))
        # Sidekiq's defaults (-t 25): the user changes nothing for graceshell;
        # or a -t of the user's own, which the integration keeps.
        options = ["-t", scenario.variant.removeprefix("-t")] if scenario.variant else []
        proc = scenario.drill(workdir, ["sidekiq", "-r", str(workdir / "jobs.rb"), "-c", "2", "-q", queue, *options],
                              env)
        try:
            started(proc, [marks / f"started-{short}", marks / f"started-{long}"], workdir)
            result = finish(proc, workdir)
        finally:
            stop_drill(proc)
        fates = {"short job": sidekiq_fate(short, marks, redis, queue),
                 "long job": sidekiq_fate(long, marks, redis, queue)}
        redis.delete(f"queue:{queue}")
        redis.srem("queues", queue)
    finally:
        redis.close()
    return {"fates": fates, "result": result, "long": long}


CONCURRENCY = 3  # threads: a short job and two long ones at once, a fourth job waiting behind them


def run_sidekiq_concurrency(scenario: Scenario, workdir: Path, redis_url: str) -> dict:
    """`sidekiq -c 3` with all its threads busy at the stop and a job waiting
    in the queue, with the user's -t (the variant's) or none."""
    from redis import Redis

    marks = workdir / "marks"
    marks.mkdir(parents=True)
    (workdir / "jobs.rb").write_text(textwrap.dedent(SIDEKIQ_JOBS))
    queue = f"survival-{workdir.name}"
    stopped = workdir / "stopped.flag"
    redis = Redis.from_url(redis_url)
    try:
        sent = {label: sidekiq_enqueue(redis, queue, seconds, "GatedJob", retry=1)
                for label, seconds in (("short", SHORT), ("long", LONG), ("long 2", LONG))}
        env = ruby_env(REDIS_URL=redis_url, MARKS_DIR=str(marks), STOPPED_FLAG=str(stopped))
        timeout = scenario.variant.partition("-t")[2]
        options = ["-t", timeout] if timeout else []
        proc = scenario.drill(workdir, ["sidekiq", "-r", str(workdir / "jobs.rb"), "-c", str(CONCURRENCY),
                                        "-q", queue, *options], env)
        try:
            wait_for(lambda: all((marks / f"started-{jid}").exists() for jid in sent.values()) or proc.poll(),
                     READY_TIMEOUT, "every thread busy")
            sent["waiting"] = sidekiq_enqueue(redis, queue, SHORT, "GatedJob", retry=1)
            (workdir / "ready.flag").touch()
            try:  # CLI#run logs "Shutting down" when it takes the TERM (lib/sidekiq/cli.rb)
                wait_for(lambda: "Shutting down" in (workdir / "drill.stderr").read_text(errors="replace"),
                         60, "Sidekiq's stop")
            finally:
                stopped.touch()
            result = finish(proc, workdir)
        finally:
            stop_drill(proc)
        fates = {f"{label} job": sidekiq_fate(jid, marks, redis, queue) for label, jid in sent.items()}
        retries = sidekiq_retries_used(redis, queue, list(sent.values()))
        redis.delete(f"queue:{queue}")
        redis.srem("queues", queue)
    finally:
        redis.close()
    return {"fates": fates, "result": result, "ids": sent, "retries used": retries}


# -- delayed_job --------------------------------------------------------------------------------

DELAYED_JOB_WORKER = """
require "active_record"
require "delayed_job"
require "delayed_job_active_record"

# delayed_job's Active Record backend on SQLite, no Rails: the table of its
# generator, one job, and a plain worker that knows nothing of graceshell.
ActiveRecord::Base.establish_connection(adapter: "sqlite3", database: ENV.fetch("DJ_DATABASE"))
ActiveRecord::Migration.verbose = false
ActiveRecord::Schema.define do
  create_table :delayed_jobs, if_not_exists: true do |t|
    t.integer :priority, default: 0, null: false
    t.integer :attempts, default: 0, null: false
    t.text :handler, null: false
    t.text :last_error
    t.datetime :run_at
    t.datetime :locked_at
    t.datetime :failed_at
    t.string :locked_by
    t.string :queue
    t.timestamps null: true
  end
end

# A labelled job's time counts from the moment the worker took the stop
# (the test's flag), however long a loaded machine takes to get there.
SleepJob = Struct.new(:seconds, :label) do
  def perform
    mark = label ? "-#{label}" : ""
    File.write(File.join(ENV.fetch("MARKS_DIR"), "started#{mark}"), "")
    sleep 0.01 until File.exist?(ENV.fetch("STOPPED_FLAG")) if label && seconds < 30
    sleep seconds
    File.write(File.join(ENV.fetch("MARKS_DIR"), "done#{mark}"), "")
  end
end

Delayed::Worker.raise_signal_exceptions = :term if ENV["DJ_RAISE_ON_TERM"]
Delayed::Worker.logger = Logger.new($stderr)
if Delayed::Job.count.zero?
  seconds = Float(ENV.fetch("JOB_SECONDS"))
  if ENV["DJ_WORKERS"]
    Delayed::Job.enqueue(SleepJob.new(seconds, "short"))
    Delayed::Job.enqueue(SleepJob.new(seconds, "waiting"), run_at: Time.now + 1) # after the short one
  else
    Delayed::Job.enqueue(SleepJob.new(seconds))
  end
end
# DJ_WORKERS: what `delayed_job -n 2 run` does (lib/delayed/command.rb with
# the daemons gem's `run`): its workers one after another, in the foreground.
Integer(ENV.fetch("DJ_WORKERS", "1")).times { Delayed::Worker.new.start }
"""


def delayed_job_fate(database: Path, marks: Path) -> str:
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT locked_by, attempts, failed_at, run_at <= datetime('now') FROM delayed_jobs"
                          ).fetchall()
    if not rows:
        return "completed" if (marks / "done").exists() else "lost"
    ((locked_by, attempts, failed_at, due),) = rows
    if locked_by:
        return "unacked (back after max_run_time, 4 h by default)"
    if failed_at:
        return "failed"
    if attempts:
        return "unacked (back after delayed_job's retry backoff, an attempt used)"
    if not (marks / "started").exists():
        return "queued"
    return "requeued" if due else "requeued, not due"


def run_delayed_job(scenario: Scenario, workdir: Path, seconds: float, raise_on_term: bool) -> dict:
    marks = workdir / "marks"
    marks.mkdir(parents=True)
    (workdir / "worker.rb").write_text(textwrap.dedent(DELAYED_JOB_WORKER))
    database = workdir / "jobs.sqlite3"
    env = ruby_env(DJ_DATABASE=str(database), MARKS_DIR=str(marks), JOB_SECONDS=str(seconds))
    if raise_on_term:
        env["DJ_RAISE_ON_TERM"] = "1"
    proc = scenario.drill(workdir, ["ruby", str(workdir / "worker.rb")], env)
    try:
        started(proc, [marks / "started"], workdir)
        result = finish(proc, workdir)
    finally:
        stop_drill(proc)
    label = "short job" if seconds == SHORT else "long job"
    return {"fates": {label: delayed_job_fate(database, marks)}, "result": result}


def delayed_job_labelled_fate(database: Path, marks: Path, label: str) -> str:
    if (marks / f"done-{label}").exists():
        return "completed"
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT locked_by, attempts, failed_at FROM delayed_jobs WHERE handler LIKE ?",
                          (f"%label: {label}%",)).fetchall()
    if not rows:
        return "lost"
    ((locked_by, attempts, failed_at),) = rows
    if locked_by:
        return "unacked (back after max_run_time, 4 h by default)"
    if failed_at or attempts:
        return "failed" if failed_at else "unacked (back after delayed_job's retry backoff, an attempt used)"
    return "requeued" if (marks / f"started-{label}").exists() else "queued"


def run_delayed_job_in_turn(scenario: Scenario, workdir: Path) -> dict:
    """Two workers one after another (`delayed_job -n 2 run`): the first runs
    a short job at the stop, a second job waits; the second worker must not
    start after the stop."""
    marks = workdir / "marks"
    marks.mkdir(parents=True)
    (workdir / "worker.rb").write_text(textwrap.dedent(DELAYED_JOB_WORKER))
    database = workdir / "jobs.sqlite3"
    stopped = workdir / "stopped.flag"
    env = ruby_env(DJ_DATABASE=str(database), MARKS_DIR=str(marks), JOB_SECONDS=str(SHORT), DJ_WORKERS="2",
                   STOPPED_FLAG=str(stopped))
    proc = scenario.drill(workdir, ["ruby", str(workdir / "worker.rb")], env)
    try:
        started(proc, [marks / "started-short"], workdir)
        try:  # its TERM and INT traps log "Exiting..." (lib/delayed/worker.rb)
            wait_for(lambda: "Exiting..." in (workdir / "drill.stderr").read_text(errors="replace"), 60,
                     "the worker's stop")
        finally:
            stopped.touch()
        result = finish(proc, workdir)
    finally:
        stop_drill(proc)
    return {"fates": {f"{label} job": delayed_job_labelled_fate(database, marks, label)
                      for label in ("short", "waiting")}, "result": result}


# -- all scenarios at once ------------------------------------------------------------------------


def scenario_of(item: pytest.Item) -> Scenario | None:
    params = getattr(getattr(item, "callspec", None), "params", {})
    name = item.originalname if hasattr(item, "originalname") else item.name
    if name == "test_sidekiq_survives_a_platform_stop":
        return Scenario("sidekiq", params["timeout"], params["broadcast"], params["wrapped"])
    if name == "test_sidekiq_with_a_timeout_too_long_requeues_at_the_cold_step":
        return Scenario("sidekiq", 10, "all", True, "-t25")
    if name == "test_sidekiq_concurrency_survives_a_platform_stop":
        return Scenario("sidekiq", 10, params["broadcast"], params["wrapped"], f"-c{CONCURRENCY}{params['timeout']}")
    if name == "test_delayed_job_survives_a_platform_stop":
        return Scenario("delayed_job", 10, params["broadcast"], params["wrapped"], params["length"])
    if name == "test_delayed_job_workers_in_turn_start_none_after_the_stop":
        return Scenario("delayed_job", 10, params["broadcast"], params["wrapped"], "in turn")
    if name == "test_delayed_job_raise_signal_exceptions_survives_a_platform_stop":
        return Scenario("delayed_job", 10, "all", params["wrapped"], params["length"] + "+term")
    return None


@pytest.fixture(scope="module")
def ruby_drills(request, ruby_ready, redis_url, tmp_path_factory):
    """Every selected scenario of this module, started at once: key -> Future."""
    chosen = [s for s in map(scenario_of, request.session.items) if s is not None]
    pool = ThreadPoolExecutor(max_workers=max(1, len(chosen)))
    futures: dict[tuple, Future] = {}
    for index, scenario in enumerate(chosen):
        workdir = tmp_path_factory.mktemp(f"{scenario.framework}-{index}")
        if scenario.framework == "sidekiq":
            run = run_sidekiq_concurrency if scenario.variant.startswith("-c") else run_sidekiq
            futures[scenario.key] = pool.submit(run, scenario, workdir, redis_url)
        elif scenario.variant == "in turn":
            futures[scenario.key] = pool.submit(run_delayed_job_in_turn, scenario, workdir)
        else:
            length, _, term = scenario.variant.partition("+")
            futures[scenario.key] = pool.submit(run_delayed_job, scenario, workdir,
                                                SHORT if length == "short" else LONG, bool(term))
    yield futures
    pool.shutdown(wait=True)


def outcome(drills: dict, scenario: Scenario, model: str, **extra: object) -> tuple[dict, dict]:
    """A scenario's run, recorded as a cell of the survival matrix."""
    run = drills[scenario.key].result()
    result = run["result"]
    record(scenario.framework, model, scenario.broadcast, scenario.wrapped, run["fates"], result, **extra)
    return run, result


def assert_stopped_by_itself(result: dict) -> None:
    """The worker was gone before graceshell's KILL: the requeue was by design, not won in a race."""
    assert result["platform_killed"] == [], result
    assert result["graceshell_killed"] == [], result
    assert result["outcome"] != "killed" and result["exit_code"] == 0, result


@pytest.mark.parametrize("wrapped", [True, False], ids=["graceshell", "bare"])
@pytest.mark.parametrize("broadcast", ["all", "group"])
@pytest.mark.parametrize("timeout", [10, 30], ids=["10s", "30s"])
def test_sidekiq_survives_a_platform_stop(ruby_drills, timeout, broadcast, wrapped):
    scenario = Scenario("sidekiq", timeout, broadcast, wrapped)
    run, result = outcome(ruby_drills, scenario, "-c 2", **{"platform timeout": f"{timeout}s"})
    if wrapped:
        assert run["fates"] == {"short job": "completed", "long job": "requeued"}, result
        assert_stopped_by_itself(result)
        assert_sidekiq_long_job_reported(run, result)


def assert_sidekiq_long_job_reported(run: dict, result: dict) -> None:
    (orphan,) = result["orphaned_jobs"]
    assert orphan["id"] == run["long"] and orphan["name"] == "SleepJob" and orphan["framework"] == "sidekiq", orphan
    assert orphan["requeued"] is True and orphan["interrupted"] is True, orphan
    assert result["survived"] is False  # a job did not fit: the drill says so


def test_sidekiq_with_a_timeout_too_long_requeues_at_the_cold_step(ruby_drills):
    """A -t 25 of the user's own is kept (and `check` warns about it), yet the
    jobs go back to Redis at graceshell's cold step, before its KILL at 8 s."""
    run, result = outcome(ruby_drills, Scenario("sidekiq", 10, "all", True, "-t25"), "-c 2 -t 25")
    assert run["fates"] == {"short job": "completed", "long job": "requeued"}, result
    assert_stopped_by_itself(result)
    assert result["outcome"] == "escalated", result  # the cold step, not Sidekiq's own timeout
    assert_sidekiq_long_job_reported(run, result)


@pytest.mark.parametrize("wrapped", [True, False], ids=["graceshell", "bare"])
@pytest.mark.parametrize("broadcast", ["all", "group"])
@pytest.mark.parametrize("timeout", ["", "-t25", "-t4"], ids=["no-t", "t25", "t4"])
def test_sidekiq_concurrency_survives_a_platform_stop(ruby_drills, timeout, broadcast, wrapped):
    """`sidekiq -c 3`, every thread busy and a job waiting: the short job
    completes, both long ones are back in Redis with their retry unused, the
    waiting one is never started. Without -t the integration fits Sidekiq's
    timeout to the budget; -t 25 (too long) is cut short at the cold step;
    -t 4 (fits) is Sidekiq's own requeue."""
    scenario = Scenario("sidekiq", 10, broadcast, wrapped, f"-c{CONCURRENCY}{timeout}")
    model = f"-c {CONCURRENCY}" + (f" -t {timeout[2:]}" if timeout else "")
    retries = ruby_drills[scenario.key].result()["retries used"]
    run, result = outcome(ruby_drills, scenario, model, **{"retries used": retries})
    if wrapped:
        assert run["fates"] == {"short job": "completed", "long job": "requeued", "long 2 job": "requeued",
                                "waiting job": "queued"}, result
        assert run["retries used"] == 0, result
        assert_stopped_by_itself(result)
        orphans = {job["id"]: job for job in result["orphaned_jobs"]}
        assert set(orphans) == {run["ids"]["long"], run["ids"]["long 2"]}, orphans
        assert all(job["requeued"] is True and job["interrupted"] is True for job in orphans.values()), orphans
    elif not timeout:  # what graceshell improves on: Sidekiq's 25 s outlast the platform's 10 s
        assert run["fates"]["long job"] == "lost" and result["platform_killed"], result


@pytest.mark.parametrize("wrapped", [True, False], ids=["graceshell", "bare"])
@pytest.mark.parametrize("broadcast", ["all", "group"])
@pytest.mark.parametrize("length", ["short", "long"])
def test_delayed_job_survives_a_platform_stop(ruby_drills, length, broadcast, wrapped):
    scenario = Scenario("delayed_job", 10, broadcast, wrapped, length)
    run, result = outcome(ruby_drills, scenario, "one worker")
    if wrapped:
        assert_delayed_job_goal(run, result, length)


@pytest.mark.parametrize("wrapped", [True, False], ids=["graceshell", "bare"])
@pytest.mark.parametrize("broadcast", ["all", "group"])
def test_delayed_job_workers_in_turn_start_none_after_the_stop(ruby_drills, broadcast, wrapped):
    """`delayed_job -n 2 run` runs its workers one after another: bare, the
    second starts when the first leaves for the stop, and takes the waiting
    job; under graceshell it does not start."""
    scenario = Scenario("delayed_job", 10, broadcast, wrapped, "in turn")
    run, result = outcome(ruby_drills, scenario, "-n 2 run (workers in turn)")
    if wrapped:
        assert run["fates"] == {"short job": "completed", "waiting job": "queued"}, result
        assert_stopped_by_itself(result)
        assert result["orphaned_jobs"] == [], result
    else:
        assert run["fates"]["waiting job"] != "queued", result  # started after the stop


@pytest.mark.parametrize("wrapped", [True, False], ids=["graceshell", "bare"])
@pytest.mark.parametrize("length", ["short", "long"])
def test_delayed_job_raise_signal_exceptions_survives_a_platform_stop(ruby_drills, length, wrapped):
    """With raise_signal_exceptions = :term the platform's own TERM aborts a job
    bare; under graceshell it must not, the warm phase stays warm."""
    scenario = Scenario("delayed_job", 10, "all", wrapped, length + "+term")
    run, result = outcome(ruby_drills, scenario, "one worker, raise_signal_exceptions = :term")
    if wrapped:
        assert_delayed_job_goal(run, result, length)


def assert_delayed_job_goal(run: dict, result: dict, length: str) -> None:
    assert_stopped_by_itself(result)
    if length == "short":
        assert run["fates"] == {"short job": "completed"}, result
        assert result["orphaned_jobs"] == [] and result["survived"] is True, result
    else:
        assert run["fates"] == {"long job": "requeued"}, result  # at once, with no attempt used
        (orphan,) = result["orphaned_jobs"]
        assert orphan["name"] == "SleepJob" and orphan["framework"] == "delayed_job", orphan
        assert orphan["requeued"] is True and orphan["interrupted"] is True, orphan
        assert result["survived"] is False
