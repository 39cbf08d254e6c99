"""Huey through a real platform stop, on redis-server: bare `huey_consumer`
beside graceshell with the huey preset and its drop-in consumer.

A consumer with three workers runs a short job (fits in the warm phase) and
a long one (does not); the third worker is idle, waiting on the queue, when
a third job comes in just after the stop: no worker may start it. Each worker type
(threads, Huey's default; processes, `-k process`; greenlets, `-k greenlet`
with gevent) is stopped by TERM to every process and to the process group,
bare and under graceshell. All stops run at once; each test reads its own.
"""

import importlib.util
import sys
import textwrap

import pytest

from conftest import clean_env, wait_for
from survival_helpers import (BIN, LONG, SHORT, assert_short_completed_long_requeued, drill,
                              finish, outcome_of, record, scenarios_of, stop_drill)

pytest.importorskip("huey")

APP = """
import os
if os.environ.get("HUEY_GREENLET"):  # as Huey's documentation asks, before anything else (the worker only)
    from gevent import monkey
    monkey.patch_all()
import time
from huey import RedisHuey

huey = RedisHuey({queue!r}, url={url!r})

@huey.task(name="work", retries=2)
def work(seconds, label):
    marks = os.environ["MARKS_DIR"]
    open(os.path.join(marks, "started-" + label), "w").close()
    time.sleep(seconds)
    open(os.path.join(marks, "done-" + label), "w").close()
"""
KINDS = ("thread", "process", "greenlet")
SCENARIOS = [(broadcast, wrapped, kind) for kind in KINDS for broadcast in ("all", "group")
             for wrapped in (True, False)]


def load_app(path, name: str):
    """The producer's side: the same module, so its task has the consumer's name for it."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fate(huey, task_id: str, marks, label: str) -> str:
    if (marks / f"done-{label}").exists():
        return "completed"
    if any(task.id == task_id for task in huey.pending()):
        return "requeued" if (marks / f"started-{label}").exists() else "queued (never started)"
    return "lost"


def stop_once(tmp_path, redis_url: str, broadcast: str, wrapped: bool, kind: str) -> tuple[dict, dict, dict]:
    if kind == "greenlet" and importlib.util.find_spec("gevent") is None:
        raise RuntimeError("gevent is missing: Huey's greenlet workers need it (the test extra installs it)")
    queue = f"survival-{broadcast}-{int(wrapped)}-{kind}"
    module = f"survival_huey_{broadcast}_{int(wrapped)}_{kind}"
    marks = tmp_path / "marks"
    marks.mkdir(parents=True)
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(APP.format(queue=queue, url=redis_url)))
    env = clean_env(PYTHONPATH=str(tmp_path), MARKS_DIR=str(marks), **({"HUEY_GREENLET": "1"} if kind == "greenlet" else {}))
    consumer = [sys.executable, "-m", "graceshell.integrations.huey"] if wrapped else [str(BIN / "huey_consumer")]
    args = ["--broadcast", broadcast, "--preset", "huey", *([] if wrapped else ["--no-wrap"]), "--",
            *consumer, f"{module}.huey", "-w", "3", "-k", kind]
    log = tmp_path / "drill.log"  # the consumer's output and graceshell's log
    with log.open("wb") as stderr:
        proc = drill(tmp_path, args, env, stderr=stderr)
    app = load_app(tmp_path / f"{module}.py", module)
    try:
        sent = {label: app.work(seconds, label) for label, seconds in (("short", SHORT), ("long", LONG))}
        wait_for(lambda: all((marks / f"started-{label}").exists() for label in sent), 60, "both jobs running")
        (tmp_path / "ready.flag").touch()
        # As soon as the consumer has taken the stop: the idle worker is then
        # most likely still in its wait on Redis (up to 1 s, read_timeout).
        wait_for(lambda: "Received SIG" in log.read_text(errors="replace"), 30, "the consumer taking the stop")
        sent["late"] = app.work(LONG, "late")
        result = finish(proc)
        fates = {f"{label} job": fate(app.huey, handle.id, marks, label) for label, handle in sent.items()}
        retries = {task.id: task.retries for task in app.huey.pending()}
        return fates, result, {label: handle.id for label, handle in sent.items()}, retries
    finally:
        stop_drill(proc)
        app.huey.storage.flush_all()


@scenarios_of("huey")
def huey_scenarios(tmp_path_factory, redis_url: str) -> dict:
    return {scenario: (lambda s=scenario: stop_once(tmp_path_factory.mktemp("huey-" + "-".join(map(str, s))),
                                                    redis_url, *s))
            for scenario in SCENARIOS}


@pytest.fixture
def huey_stops(framework_stops):
    return framework_stops["huey"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("broadcast", ["all", "group"])
@pytest.mark.parametrize("wrapped", [True, False], ids=["graceshell", "bare"])
def test_huey_survives_a_platform_stop(huey_stops, kind, broadcast, wrapped):
    """Under graceshell, whatever the worker type: the short job finishes, the
    long one goes back with its retries untouched (2) and is in the report,
    the late one is never started. (test_huey_<kind>_... in the ids: thread,
    process, greenlet.)"""
    fates, result, ids, retries = outcome_of(huey_stops, (broadcast, wrapped, kind))
    record("huey", f"-k {kind}", broadcast, wrapped, fates, result)
    if wrapped:
        assert fates.pop("late job") == "queued (never started)"
        assert_short_completed_long_requeued(fates, result, {label: ids[label] for label in ("short", "long")})
        assert retries[ids["long"]] == 2  # the requeue used up none of its retries
