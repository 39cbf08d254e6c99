"""graceshell's own death (kill -9, the OOM killer's) and long-running health."""

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from conftest import GUARD_NAME, alive, clean_env, is_guard, wait_for
from graceshell.config.plan import make_plan
from graceshell.config.presets import preset_layer
from graceshell.config.settings import Origin, Setting
from graceshell.signals import signal_name


def private_tmp(tmp_path: Path) -> Path:
    base = tmp_path / "tmp"
    base.mkdir(exist_ok=True)
    return base


def run_dirs(base: Path) -> list[Path]:
    return [p for p in base.iterdir() if p.name.startswith("graceshell-")]


def kill_9(run) -> None:
    os.kill(run.pid, signal.SIGKILL)
    run.proc.wait(5)


def test_kill_9_of_graceshell_sends_the_worker_its_warm_signal(graceshell, worker, tmp_path):
    base = private_tmp(tmp_path)
    run = graceshell("--platform", "none", "--log-format", "json", *worker(), env=clean_env(TMPDIR=str(base)))
    pid = run.ready()["pid"]
    assert run.event("graceshell.start")["parent_death_signal"] == "TERM"
    killed = time.monotonic()
    kill_9(run)
    wait_for(lambda: not alive(pid), 5, "the worker to go with graceshell")
    gone_after = time.monotonic() - killed
    assert gone_after < 1.0 + 1.0, f"worker outlived graceshell by {gone_after:.2f}s"  # 1 s, plus a loaded machine
    assert run.names(pid) == ["TERM"]
    # The kill -9 left the run directory behind; the next graceshell sweeps it.
    (left,) = run_dirs(base)
    old = time.time() - 60
    os.utime(left, (old, old))
    after = graceshell("--platform", "none", "--log-format", "json", "--", "sleep", "1",
                       env=clean_env(TMPDIR=str(base)))  # long enough for its sweep
    assert after.wait() == 0
    assert after.event("graceshell.stale_run_dirs")["removed"] == [str(left)]
    assert run_dirs(base) == []


def test_a_worker_that_ignores_the_warm_signal_needs_kill_as_its_parent_death_signal(graceshell, worker, tmp_path):
    config = tmp_path / "graceshell.yml"
    config.write_text("defaults:\n  parent_death_signal: KILL\n")
    run = graceshell("--platform", "none", "--log-format", "json", "--config", str(config), *worker("--ignore", "TERM"))
    pid = run.ready()["pid"]
    assert run.event("graceshell.start")["parent_death_signal"] == "KILL"
    kill_9(run)
    wait_for(lambda: not alive(pid), 2.0, "the worker to be killed with graceshell")


def test_a_worker_that_ignores_the_warm_signal_hears_it_and_stays(graceshell, worker, tmp_path):
    """The default trusts the worker's warm shutdown; one that ignores TERM outlives graceshell (documented)."""
    run = graceshell("--platform", "none", "--log-format", "json", *worker("--ignore", "TERM"))
    pid = run.ready()["pid"]
    kill_9(run)
    try:
        wait_for(lambda: run.names(pid) == ["TERM"], 5, "the worker to hear TERM")
        time.sleep(0.5)
        assert alive(pid)
    finally:
        os.kill(pid, signal.SIGKILL)


def test_the_worker_still_starts_and_fails_as_before(graceshell, tmp_path):
    missing = graceshell("--platform", "none", "--", "no-such-command-anywhere")
    assert missing.wait() == 127
    assert "command not found" in missing.stderr()
    not_executable = graceshell("--platform", "none", "--", str(tmp_path))
    assert not_executable.wait() == 126


def plan_for(preset: str, **extra: object):
    settings = {**preset_layer(preset), "platform": Setting("none", Origin("--platform"))}
    settings.update({key: Setting(value, Origin(f"--{key}")) for key, value in extra.items()})
    return make_plan(["worker"], settings, environ={})


@pytest.mark.parametrize(("preset", "expected"), [
    ("generic", "TERM"), ("celery", "TERM"), ("rq", "TERM"), ("sidekiq", "TERM"), ("resque", "QUIT"),
    ("delayed_job", "INT"), ("gunicorn", "TERM"), ("uvicorn", "TERM"),
])
def test_the_parent_death_signal_defaults_to_the_presets_warm_shutdown(preset, expected):
    assert signal_name(plan_for(preset).parent_death_signal) == expected


def test_the_parent_death_signal_follows_a_remap_and_can_be_set():
    assert plan_for("generic", remap={int(signal.SIGTERM): int(signal.SIGQUIT)}).parent_death_signal == signal.SIGQUIT
    assert plan_for("celery", parent_death_signal=int(signal.SIGKILL)).parent_death_signal == signal.SIGKILL


@pytest.mark.parametrize(("value", "message"), [
    ("NOPE", "defaults.parent_death_signal: unknown signal 'NOPE'"),
    ("STOP", "defaults.parent_death_signal: STOP would leave the worker stopped"),
])
def test_a_bad_parent_death_signal_is_a_one_line_error(graceshell, tmp_path, value, message):
    config = tmp_path / "graceshell.yml"
    config.write_text(f"defaults:\n  parent_death_signal: {value}\n")
    run = graceshell("--platform", "none", "--config", str(config), "--", "true")
    assert run.wait() == 2
    assert run.stderr().count("\n") == 1 and f"graceshell.yml:2: {message}" in run.stderr()


def guard_of(run) -> psutil.Process:
    def guards() -> list[psutil.Process]:
        return [kid for kid in psutil.Process(run.pid).children() if is_guard(kid)]

    return wait_for(guards, 10, "the guard")[0]


def test_the_guard_is_no_part_of_the_worker_tree_and_goes_with_the_worker(graceshell, worker):
    run = graceshell("--platform", "none", "--log-format", "json", *worker("--exit-on", "TERM"))
    run.ready()
    guard = guard_of(run)
    run.kill(signal.SIGTERM)
    assert run.wait() == 0
    report = run.report()
    assert report["outcome"] == "clean" and report["killed"] == [] and report["reaped_orphans"] == 0
    assert not alive(guard.pid)
    assert "leftovers" not in run.stderr()


def test_a_killed_guard_is_reported_and_supervision_goes_on(graceshell, worker):
    run = graceshell("--platform", "none", "--log-format", "json", *worker("--exit-on", "TERM"))
    run.ready()
    guard = guard_of(run)
    guard.kill()
    wait_for(lambda: "graceshell.guard_lost" in run.stderr(), 5, "graceshell.guard_lost")
    run.kill(signal.SIGTERM)
    assert run.wait() == 0
    assert run.report()["outcome"] == "clean"


STORM = 20_000
SENDER = """
import os, signal, sys
pid, count = int(sys.argv[1]), int(sys.argv[2])
kinds = (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM)
for i in range(count):
    os.kill(pid, kinds[i % 3])
"""


def test_a_storm_of_signals_loses_no_stop_and_does_not_flood_the_log(graceshell, worker):
    import subprocess
    import sys

    run = graceshell("--platform", "none", "--log-format", "json", "--second-signal", "forward",
                     *worker("--ignore", "HUP,USR1,TERM", "--exit-on", "QUIT:3"))
    pid = run.ready()["pid"]
    sender = subprocess.run([sys.executable, "-c", SENDER, str(run.pid), str(STORM)], timeout=60)
    assert sender.returncode == 0
    wait_for(lambda: {"HUP", "USR1", "TERM"} <= set(run.names(pid)), 10, "each kind at the worker")
    run.kill(signal.SIGQUIT)  # after the storm: the worker leaves with a status of its own
    assert run.wait(30) == 3
    report = run.report()
    assert report["stop_signal"] == "TERM" and report["exit_code"] == 3
    assert run.names(pid)[-1] == "QUIT"
    lines = run.stderr().splitlines()
    assert len(lines) < 100, f"{len(lines)} log lines for {STORM} signals"
    forwards = [e for e in run.events() if e["event"] == "graceshell.forward"]
    summaries = [e for e in run.events() if e["event"] == "graceshell.forward_summary"]
    assert {e["received"] for e in forwards} >= {"HUP", "USR1"}
    assert summaries and sum(sum(s["counts"].values()) for s in summaries) > 0
    # Signals coalesce in the kernel: the worker hears fewer than were sent, never more.
    assert len(run.names(pid)) <= STORM + 1


def test_kill_9_of_start_stops_each_graceshell_it_started(tmp_path):
    import subprocess
    import sys

    (tmp_path / "Procfile").write_text("sleeper: sleep 300\n")
    with open(tmp_path / "start.out", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "graceshell", "start", "--platform", "none", "--log-format",
                                 "json"], cwd=tmp_path, env=clean_env(), stdout=out, stderr=out,
                                start_new_session=True)
    me = psutil.Process(proc.pid)
    started_here: list[psutil.Process] = []
    try:
        runs = wait_for(lambda: [kid for kid in me.children() if "run" in kid.cmdline()], 20, "graceshell run")
        sleeper = wait_for(lambda: [p for p in runs[0].children(recursive=True) if p.name() == "sleep"], 20,
                           "the worker")[0]
        started_here += [runs[0], sleeper]
        wait_for(lambda: b'"graceshell.start"' in (tmp_path / "start.out").read_bytes(), 20, "graceshell run's start")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        wait_for(lambda: not alive(runs[0].pid) and not alive(sleeper.pid), 10,
                 "graceshell run and its worker to stop")
    finally:
        for leftover in started_here:
            try:
                leftover.kill()
            except psutil.Error:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_closed_log_pipe_does_not_reach_the_worker():
    """graceshell's own write to a closed stderr raises SIGPIPE in graceshell: it is not the worker's."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "graceshell", "run", "--platform", "none", "--log-format", "json",
                             "--", "sleep", "300"], env=clean_env(), stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.stderr.readline()  # graceshell.start is out
        (sleeper,) = [kid for kid in psutil.Process(proc.pid).children() if kid.name() == "sleep"]
        proc.stderr.close()  # the log collector goes away
        os.kill(proc.pid, signal.SIGWINCH)  # harmless to sleep; graceshell logs its forward into the closed pipe
        time.sleep(0.5)
        assert alive(sleeper.pid) and proc.poll() is None
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(10) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


GUARDED = """
import os, subprocess, sys
from graceshell.engine import guard
if sys.argv[1] != "shell":
    guard._SHELL = "/nonexistent/sh"  # as in an image without a shell: graceshell forks the guard itself
worker = subprocess.Popen(["sleep", "60"])
made = guard.start(worker.pid, os.pidfd_open(worker.pid), 15)
print(worker.pid, made.pid, flush=True)
sys.stdin.read()  # until the test has looked; then this stand-in for graceshell dies without a word
os._exit(0)
"""


@pytest.mark.parametrize("kind", ["shell", "forked"])
def test_either_guard_signals_the_worker_when_its_graceshell_dies(kind):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", GUARDED, kind], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    worker_pid, guard_pid = map(int, proc.stdout.readline().split())
    try:
        guard = psutil.Process(guard_pid)
        def named() -> str:
            try:  # the fork names itself a moment after it starts
                return (guard.cmdline() or [""])[0] if kind == "shell" else guard.name()
            except psutil.Error:
                return ""

        wait_for(lambda: named() == GUARD_NAME, 5, "the guard's name")
        assert alive(worker_pid)
        proc.stdin.close()
        proc.wait(5)
        wait_for(lambda: not alive(worker_pid), 5, "the worker to get its signal")
        wait_for(lambda: not alive(guard_pid), 5, "the guard to exit")
    finally:
        for pid in (worker_pid, guard_pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


CRASHING = """
import sys
import graceshell.logs
from graceshell.config.plan import make_plan
from graceshell.config.settings import Origin, Setting
from graceshell.engine.supervisor import Supervisor


def broken(*args, **kwargs):
    raise RuntimeError("a bug of graceshell's, after the spawn")


graceshell.logs.make_logger = broken
Supervisor(make_plan(sys.argv[1:], {"platform": Setting("none", Origin("test"))}, {}), "json").run()
"""


def test_a_graceshell_that_fails_after_the_spawn_leaves_no_worker_behind(tmp_path):
    import subprocess
    import sys

    from conftest import WORKER

    result = subprocess.run([sys.executable, "-c", CRASHING, sys.executable, WORKER, str(tmp_path)],
                            env=clean_env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "a bug of graceshell's" in result.stderr
    ready = tmp_path / "ready.json"
    if ready.exists():  # the worker got that far: it must have heard TERM and gone
        import json

        pid = json.loads(ready.read_text())["pid"]
        wait_for(lambda: not alive(pid), 5, "the worker to go")

    def workers_left() -> list[int]:
        found = []
        for proc in psutil.process_iter():
            try:
                if str(tmp_path) in proc.cmdline() and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc.pid)
            except psutil.Error:
                pass
        return found

    wait_for(lambda: not workers_left(), 5, "no worker left")
