"""Huey through a real platform stop, on redis-server: bare `huey_consumer`
beside graceshell with the huey preset and its drop-in consumer.

A consumer with two workers runs a short job (fits in the warm phase) and
a long one (does not). Thread workers (Huey's default) are stopped by TERM
to every process and to the process group; process workers (`-k process`,
children of their own) by TERM to every process. All stops run at once;
each test reads its own.
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
import os, time
from huey import RedisHuey

huey = RedisHuey({queue!r}, url={url!r})

@huey.task(name="work")
def work(seconds, label):
    marks = os.environ["MARKS_DIR"]
    open(os.path.join(marks, "started-" + label), "w").close()
    time.sleep(seconds)
    open(os.path.join(marks, "done-" + label), "w").close()
"""
SCENARIOS = [(broadcast, wrapped, kind) for broadcast, kind in (("all", "thread"), ("group", "thread"),
                                                                ("all", "process"))
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
        return "requeued"
    return "lost"


def stop_once(tmp_path, redis_url: str, broadcast: str, wrapped: bool, kind: str) -> tuple[dict, dict, dict]:
    queue = f"survival-{broadcast}-{int(wrapped)}-{kind}"
    module = f"survival_huey_{broadcast}_{int(wrapped)}_{kind}"
    marks = tmp_path / "marks"
    marks.mkdir(parents=True)
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(APP.format(queue=queue, url=redis_url)))
    env = clean_env(PYTHONPATH=str(tmp_path), MARKS_DIR=str(marks))
    consumer = [sys.executable, "-m", "graceshell.integrations.huey"] if wrapped else [str(BIN / "huey_consumer")]
    args = ["--broadcast", broadcast, "--preset", "huey", *([] if wrapped else ["--no-wrap"]), "--",
            *consumer, f"{module}.huey", "-w", "2", "-k", kind]
    proc = drill(tmp_path, args, env)
    app = load_app(tmp_path / f"{module}.py", module)
    try:
        sent = {label: app.work(seconds, label) for label, seconds in (("short", SHORT), ("long", LONG))}
        wait_for(lambda: all((marks / f"started-{label}").exists() for label in sent), 60, "both jobs running")
        (tmp_path / "ready.flag").touch()
        result = finish(proc)
        fates = {f"{label} job": fate(app.huey, handle.id, marks, label) for label, handle in sent.items()}
        return fates, result, {label: handle.id for label, handle in sent.items()}
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


@pytest.mark.parametrize("broadcast, kind", [("all", "thread"), ("group", "thread"), ("all", "process")],
                         ids=["all", "group", "all-process-workers"])
@pytest.mark.parametrize("wrapped", [True, False], ids=["graceshell", "bare"])
def test_huey_survives_a_platform_stop(huey_stops, broadcast, kind, wrapped):
    fates, result, ids = outcome_of(huey_stops, (broadcast, wrapped, kind))
    record("huey", f"-k {kind}", broadcast, wrapped, fates, result)
    if wrapped:
        assert_short_completed_long_requeued(fates, result, ids)
