"""The price of a job: workers draining no-op tasks, bare and under graceshell.

For each framework and execution model, N no-op tasks are queued on a
redis-server of the benchmark's own (loopback, a free port), then the worker
drains them: bare, and under `graceshell run --preset <framework>`, the same
command, trials interleaved (bare and graceshell alternate, the order
flipping each round) so that a machine whose speed varies slows both alike.
The rate is read from the queue's length in Redis: from the moment 5 % of
the tasks are gone (the worker's start-up is not the price of a job) to the
moment the queue is empty. graceshell's own CPU over the same interval comes
from /proc (psutil). Separately, `jobs.track` is timed in-process.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

BIN = Path(sys.executable).parent

# Each app: a module written into the work directory, what queues N tasks
# (run in this process), and the worker's command line.
APPS = {
    "bench_celery": """
        import os
        from celery import Celery
        app = Celery("bench_celery", broker=os.environ["REDIS_URL"])
        app.conf.worker_hijack_root_logger = False
        @app.task(name="noop", ignore_result=True)
        def noop():
            pass
        def enqueue(count):
            for _ in range(count):
                noop.delay()
    """,
    "bench_rq": """
        import os
        from redis import Redis
        from rq import Queue
        def noop():
            pass
        def enqueue(count):
            queue = Queue("bench", connection=Redis.from_url(os.environ["REDIS_URL"]))
            with queue.connection.pipeline() as pipe:
                for _ in range(count):
                    queue.enqueue("bench_rq.noop", result_ttl=0, pipeline=pipe)
                pipe.execute()
    """,
    "bench_dramatiq": """
        import os
        import dramatiq
        from dramatiq.brokers.redis import RedisBroker
        dramatiq.set_broker(RedisBroker(url=os.environ["REDIS_URL"]))
        @dramatiq.actor(queue_name="bench", max_retries=0)
        def noop():
            pass
        def enqueue(count):
            for _ in range(count):
                noop.send()
    """,
    "bench_huey": """
        import os
        from huey import RedisHuey
        huey = RedisHuey("bench", url=os.environ["REDIS_URL"])
        @huey.task(name="noop")
        def noop():
            pass
        def enqueue(count):
            for _ in range(count):
                noop()
    """,
}

# (label, preset, app module, the worker's argv). The same command runs bare
# and under graceshell: the integrations do nothing outside graceshell, so
# what differs is graceshell and the ledger alone.
MODELS = (
    ("celery solo", "celery", "bench_celery",
     ["celery", "-A", "bench_celery", "worker", "-P", "solo", "--loglevel", "WARNING", "--without-mingle",
      "--without-gossip", "--without-heartbeat"]),
    ("celery prefork -c 1", "celery", "bench_celery",
     ["celery", "-A", "bench_celery", "worker", "-P", "prefork", "-c", "1", "--loglevel", "WARNING",
      "--without-mingle", "--without-gossip", "--without-heartbeat"]),
    ("rq SimpleWorker", "rq", "bench_rq",
     ["rq", "worker", "-w", "graceshell.integrations.rq.SimpleWorker", "--logging_level", "WARNING", "bench"]),
    ("dramatiq -p 1 -t 1", "dramatiq", "bench_dramatiq",
     ["dramatiq", "bench_dramatiq", "graceshell.integrations.dramatiq", "--processes", "1", "--threads", "1"]),
    ("huey -w 1", "huey", "bench_huey",
     ["python", "-m", "graceshell.integrations.huey", "bench_huey.huey", "-w", "1", "-q"]),
)
SMOKE_MODELS = ("celery solo", "rq SimpleWorker")
START_FRACTION = 0.95  # the clock starts once this much of the queue is left


class Redis:
    """A redis-server of the benchmark's own on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen([server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        self.client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(10)


def _queue_key(client, count: int) -> bytes:
    """The list that holds the tasks just queued, whatever the framework calls it: the longest."""
    lists = [(client.llen(key), key) for key in client.scan_iter(count=1000) if client.type(key) == b"list"]
    if not lists or max(lists)[0] < count // 2:
        raise RuntimeError(f"no list of {count} tasks in Redis after queueing them: {sorted(lists)[-3:]}")
    return max(lists)[1]


def _cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of `pid` and each of its descendants, by pid."""
    import psutil

    seconds = {}
    try:
        root = psutil.Process(pid)
        for proc in (root, *root.children(recursive=True)):
            times = proc.cpu_times()
            seconds[proc.pid] = times.user + times.system
    except psutil.NoSuchProcess:
        pass
    return seconds


def _kill(proc: subprocess.Popen) -> None:
    """Kill the worker's tree and graceshell: the stop is not what is measured here
    (and a stop after the drain would wait on the framework's shutdown)."""
    import psutil

    try:  # listed first: graceshell starts the worker in a session of its own, out of reach of killpg
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    for process in tree:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    proc.kill()
    proc.wait()


def drain_once(redis: Redis, workdir: Path, label: str, preset: str, module: str, argv: list[str],
               count: int, wrapped: bool, graceshell: str) -> dict[str, float]:
    """Queue `count` no-op tasks, start the worker, time the drain."""
    import importlib

    redis.client.flushall()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRACESHELL_")}
    env.update(REDIS_URL=redis.url, PYTHONPATH=os.pathsep.join(filter(None, [str(workdir), env.get("PYTHONPATH")])))
    sys.path.insert(0, str(workdir))
    try:
        importlib.import_module(module).enqueue(count)  # type: ignore[attr-defined]
    finally:
        sys.path.remove(str(workdir))
    key = _queue_key(redis.client, count)
    count = redis.client.llen(key)  # what is there to drain (a task may have gone where the key was not looked for)
    command = [str(BIN / argv[0]) if argv[0] != "python" else sys.executable, *argv[1:]]
    if wrapped:
        command = [graceshell, "run", "--preset", preset, "--platform", "none", "--log-format", "json", "--",
                   *command]
    proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        left = count
        deadline = time.monotonic() + 60 + count / 50
        while left > count * START_FRACTION:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{label}: the worker did not drain its queue (exit {proc.returncode})")
            time.sleep(0.005)
            left = redis.client.llen(key)
        began, from_left = time.monotonic(), left
        cpu_before = _cpu_seconds(proc.pid) if wrapped else 0.0
        tree_before = _tree_cpu(proc.pid)
        while left:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{label}: the worker did not drain its queue (exit {proc.returncode})")
            time.sleep(0.005)
            left = redis.client.llen(key)
        took = time.monotonic() - began
        cpu = _cpu_seconds(proc.pid) - cpu_before if wrapped else 0.0
        tree = sum(seconds - tree_before.get(pid, 0.0) for pid, seconds in _tree_cpu(proc.pid).items())
    finally:
        _kill(proc)
    return {"tasks_per_s": from_left / took, "graceshell_cpu_s": cpu, "tree_cpu_s": tree, "tasks": from_left,
            "seconds": took}


def track_cost(calls: int) -> dict[str, float]:
    """µs per `with jobs.track(...)` of a task like Celery's, in a ledger on
    the file system graceshell uses ($TMPDIR), and outside graceshell. CPU
    time of this process (system calls included), which a loaded machine
    disturbs far less than the wall clock."""
    from graceshell import jobs

    def per_call(tracker: type = jobs.track) -> float:
        began = time.process_time()
        for index in range(calls):
            with tracker(f"5b1f3c2e-77aa-4c1d-9e0f-{index:012d}", "tasks.noop", queue="celery", acks_late=False,
                         retries=0):
                pass
        return (time.process_time() - began) / calls * 1e6

    saved = os.environ.pop(jobs.JOBS_DIR_ENV, None)
    try:
        outside = statistics.median(per_call() for _ in range(3))
        with tempfile.TemporaryDirectory(prefix="graceshell-bench-") as ledger:
            os.environ[jobs.JOBS_DIR_ENV] = ledger
            per_call()  # warm
            inside = statistics.median(per_call() for _ in range(5))
            # What the integrations use: the entry written only for a job still running after 0.2 s.
            deferred = getattr(jobs, "track_deferred", None)
            late = statistics.median(per_call(deferred) for _ in range(5)) if deferred else None
    finally:
        os.environ.pop(jobs.JOBS_DIR_ENV, None)
        if saved is not None:
            os.environ[jobs.JOBS_DIR_ENV] = saved
    return {"jobs.track, us per job": round(inside, 1),
            "jobs.track_deferred (the integrations'), us per short job": round(late, 2) if late else None,
            "jobs.track outside graceshell, us": round(outside, 2)}


def throughput(workdir: Path, graceshell: str, count: int, trials: int, smoke: bool) -> dict[str, object]:
    """Every model, bare and under graceshell, `trials` interleaved rounds; medians."""
    import textwrap

    for module, source in APPS.items():
        (workdir / f"{module}.py").write_text(textwrap.dedent(source))
    models = [m for m in MODELS if not smoke or m[0] in SMOKE_MODELS]
    runs: dict[tuple[str, bool], list[dict[str, float]]] = {(m[0], w): [] for m in models for w in (False, True)}
    failures: dict[str, str] = {}
    try:
        redis = Redis(workdir)
    except RuntimeError as exc:
        return {"skipped": str(exc), **track_cost(500 if smoke else 5000)}
    os.environ["REDIS_URL"] = redis.url  # the apps queue their tasks from this process too
    try:
        for round_ in range(trials):
            for label, preset, module, argv in models:
                if label in failures:
                    continue
                order = (False, True) if round_ % 2 == 0 else (True, False)
                for wrapped in order:
                    try:
                        runs[(label, wrapped)].append(
                            drain_once(redis, workdir, label, preset, module, argv, count, wrapped, graceshell))
                    except RuntimeError as exc:
                        failures[label] = str(exc)
                        break
    finally:
        redis.close()
    results: dict[str, object] = {}
    for label, *_ in models:
        if label in failures:
            results[label] = {"error": failures[label]}
            continue
        bare = [r["tasks_per_s"] for r in runs[(label, False)]]
        wrapped = [r["tasks_per_s"] for r in runs[(label, True)]]
        # Each round's ratio, then their median: the pair ran side by side.
        ratios = [w / b for w, b in zip(wrapped, bare)]
        # CPU of the whole tree per task (graceshell's included): on a loaded
        # machine the wall clock says more about the neighbours than about us.
        cpu_ratios = [b["tree_cpu_s"] / b["tasks"] / (w["tree_cpu_s"] / w["tasks"])
                      for w, b in zip(runs[(label, True)], runs[(label, False)]) if w["tree_cpu_s"]]
        cpu_per_1000 = [r["graceshell_cpu_s"] / r["tasks"] * 1000 for r in runs[(label, True)]]
        core_share = [r["graceshell_cpu_s"] / r["seconds"] for r in runs[(label, True)]]
        results[label] = {
            "bare tasks/s": round(statistics.median(bare)),
            "graceshell tasks/s": round(statistics.median(wrapped)),
            "ratio": round(statistics.median(ratios), 3),
            "ratio range": [round(min(ratios), 3), round(max(ratios), 3)],
            "CPU ratio": round(statistics.median(cpu_ratios), 3) if cpu_ratios else None,
            "tree CPU ms per job, bare": round(statistics.median(r["tree_cpu_s"] / r["tasks"] * 1000
                                                                 for r in runs[(label, False)]), 3),
            "tree CPU ms per job, graceshell": round(statistics.median(r["tree_cpu_s"] / r["tasks"] * 1000
                                                                       for r in runs[(label, True)]), 3),
            "graceshell CPU s per 1000 jobs": round(statistics.median(cpu_per_1000), 4),
            "graceshell CPU, % of a core": round(statistics.median(core_share) * 100, 2),
            "trials": len(ratios), "tasks": count,
        }
    results.update(track_cost(500 if smoke else 5000))
    return results


def print_table(results: dict[str, object], emit: Callable[[str], None] = print) -> None:
    if "skipped" in results:
        emit(f"  skipped: {results['skipped']}")
    emit(f"  {'model':<22} {'bare/s':>8} {'graceshell/s':>13} {'ratio':>6} {'(min-max)':>13} "
         f"{'CPU ratio':>9} {'gs CPU s/1000 jobs':>19} {'% core':>7}")
    for label, row in results.items():
        if not isinstance(row, dict):
            continue
        if "error" in row:
            emit(f"  {label:<22} {row['error']}")
            continue
        low, high = row["ratio range"]
        emit(f"  {label:<22} {row['bare tasks/s']:>8} {row['graceshell tasks/s']:>13} {row['ratio']:>6.3f} "
             f"{f'({low:.2f}-{high:.2f})':>13} {row['CPU ratio'] or 0:>9.3f} "
             f"{row['graceshell CPU s per 1000 jobs']:>19.4f} "
             f"{row['graceshell CPU, % of a core']:>7.2f}")
    for key in ("jobs.track, us per job", "jobs.track_deferred (the integrations'), us per short job",
                "jobs.track outside graceshell, us"):
        if key in results:
            emit(f"  {key:<58} {results[key]}")
