"""What the end-to-end survival tests share: the drill that plays the
platform, how its verdict is read, and the table the runs make (printed by
conftest's terminal summary, and copied into docs/survival.md)."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from conftest import kill_tree

BIN = Path(sys.executable).parent
PLATFORM = ["--platform", "heroku", "--platform-timeout", "10s"]  # budget 8s
SHORT, LONG = 1.5, 60.0
SURVIVAL: list[dict] = []
# How many stops run at once. Each is a worker tree that mostly waits on a
# sleeping job or a timeout, but all of the matrix at once (about ninety
# trees) starved a 2-core machine: a cold shutdown then overran its reserve
# and the cell failed for the machine's sake, not the framework's.
MAX_STOPS_AT_ONCE = int(os.environ.get("GRACESHELL_TEST_STOPS_AT_ONCE", "12"))


def drill(tmp: Path, args: list[str], env: dict, *, timeout: float | None = None, ready: Path | None = None,
          stderr: Any = subprocess.DEVNULL) -> subprocess.Popen:
    """The drill on Heroku's model, with PLATFORM's timeout unless `timeout` is given; it stops
    the worker once `ready` (default tmp/ready.flag) exists. `stderr`: the workers' output and
    graceshell's log (a file to read them)."""
    platform = PLATFORM if timeout is None else ["--platform", "heroku", "--platform-timeout", f"{timeout}s"]
    return subprocess.Popen([sys.executable, "-m", "graceshell", "drill", *platform, "--json",
                             "--when-ready", str(ready or tmp / "ready.flag"), *args],
                            cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=stderr)


def stop_drill(proc: subprocess.Popen) -> None:
    """On a failure, the drill and every worker process under it: none may outlive the test."""
    kill_tree(proc)


def finish(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=90)
    return json.loads(out)


def record(framework: str, model: str, broadcast: str, wrapped: bool, fates: dict, result: dict,
           **extra: Any) -> None:
    """One cell of the survival matrix: `framework` run in execution `model`
    (its pool, worker class or concurrency), stopped the `broadcast` way
    ("all": every process, "group": PID 1 or the process group), bare or
    under graceshell; `fates` maps each job to what became of it."""
    SURVIVAL.append({"framework": framework, "model": model, "broadcast": broadcast,
                     "setup": "graceshell + preset" if wrapped else "bare", **extra, **fates,
                     "platform_sigkill": bool(result["platform_killed"])})


# framework -> what builds its scenarios: (tmp_path_factory, redis_url) ->
# {key: a function that runs one stop and returns what its test checks}.
SCENARIO_BUILDERS: dict[str, Callable[[Any, str], dict[Any, Callable[[], Any]]]] = {}


def scenarios_of(framework: str) -> Callable:
    """Register a test module's scenario builder; conftest's `framework_stops`
    runs the scenarios of every selected framework at once."""
    def register(build: Callable[[Any, str], dict[Any, Callable[[], Any]]]) -> Callable:
        SCENARIO_BUILDERS[framework] = build
        return build

    return register


def run_concurrently(scenarios: dict[Any, Callable[[], Any]]) -> dict[Any, Any]:
    """Run the scenarios side by side, MAX_STOPS_AT_ONCE at a time (each
    mostly waits on a sleeping job or a timeout).
    Returns each one's value, or the exception it raised."""
    def outcome(run: Callable[[], Any]) -> Any:
        try:
            return run()
        except BaseException as exc:  # noqa: BLE001 - handed to the test that owns the scenario
            return exc

    with ThreadPoolExecutor(max_workers=min(len(scenarios), MAX_STOPS_AT_ONCE)) as pool:
        futures = {key: pool.submit(outcome, run) for key, run in scenarios.items()}
        return {key: future.result() for key, future in futures.items()}


def outcome_of(outcomes: dict[Any, Any], key: Any) -> Any:
    value = outcomes[key]
    if isinstance(value, BaseException):
        raise value
    return value


def assert_short_completed_long_requeued(fates: dict, result: dict, ids: dict) -> None:
    """Under graceshell: the short job finished, the long one went back to its
    queue and is still named in the report, and the platform killed nothing."""
    assert fates == {"short job": "completed", "long job": "requeued"}, result
    assert result["platform_killed"] == [], result
    (orphan,) = result["orphaned_jobs"]  # named in the report, although it went back
    assert orphan["id"] == ids["long"] and orphan["name"] == "work"
    assert orphan["requeued"] is True and orphan["interrupted"] is True
    assert result["survived"] is False  # a job did not fit: the drill says so
