"""Long-running health: many runs and many restarts leave nothing behind.

File descriptors and RSS are measured where they can grow: in one process
that runs the supervisor 1000 times in a row, and in one `graceshell start`
that restarts a crashing process 200 times. Run directories and zombies are
counted too.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from conftest import clean_env, wait_for

RUNS, RUNS_WARM_UP = 1000, 50
RESTARTS, RESTARTS_WARM_UP = 200, 20
RSS_SLACK = 2 * 1024 * 1024  # allocator noise, not growth: a leak per run would be far past it

# The supervisor 1000 times in one process: what one run opens, it must close.
MANY_RUNS = """
import json, os, sys
from graceshell.config.plan import make_plan
from graceshell.config.settings import Origin, Setting
from graceshell.engine.supervisor import Supervisor


def fds():
    return len(os.listdir("/proc/self/fd"))


def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


runs, warm = int(sys.argv[1]), int(sys.argv[2])
plan = make_plan(["true"], {"platform": Setting("none", Origin("test")), "linger": Setting(0.0, Origin("test"))}, {})
for index in range(runs):
    if index == warm:
        first = fds(), rss()
    assert Supervisor(plan, "json", "info").run() == 0
last = fds(), rss()
try:
    os.waitpid(-1, os.WNOHANG)
    children = True
except ChildProcessError:
    children = False
print(json.dumps({"fds": [first[0], last[0]], "rss": [first[1], last[1]], "children_left": children}))
"""

# `graceshell start` itself, with its restart backoff (1 s, doubling up to
# 30 s, a constant) shortened to 10 ms so that 200 restarts take seconds.
START_WITH_SHORT_BACKOFF = """
import runpy, sys
import graceshell.commands.start as start
start.BACKOFF_FIRST = start.BACKOFF_MAX = 0.01
sys.argv = ["graceshell", *sys.argv[1:]]
runpy.run_module("graceshell", run_name="__main__", alter_sys=True)
"""


def test_a_thousand_runs_in_a_row_leave_no_fd_memory_child_or_run_directory(tmp_path):
    base = tmp_path / "tmp"
    base.mkdir()
    began = time.monotonic()
    result = subprocess.run([sys.executable, "-c", MANY_RUNS, str(RUNS), str(RUNS_WARM_UP)],
                            env=clean_env(TMPDIR=str(base)), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    events = [json.loads(line)["event"] for line in result.stderr.splitlines()]
    print(f"{RUNS} runs in {time.monotonic() - began:.1f}s: {figures}")
    first_fds, last_fds = figures["fds"]
    first_rss, last_rss = figures["rss"]
    assert last_fds == first_fds
    assert last_rss - first_rss < RSS_SLACK
    assert not figures["children_left"]
    assert events == ["graceshell.start", "graceshell.reap", "graceshell.exit"] * RUNS  # the same three each time
    assert list(base.iterdir()) == []


def _status(proc: psutil.Process) -> str | None:
    """A child's state, or None once it is reaped (between listing and looking)."""
    try:
        return proc.status()
    except psutil.NoSuchProcess:
        return None


def sample(proc: psutil.Process, count: int = 30) -> tuple[int, int, int]:
    """The fewest fds, the least RSS and the fewest zombies over `count` looks:
    a crashing process comes and goes, and its pipes and its unreaped exit
    with it; what leaks is there at every look."""
    fds, rss, zombies = [], [], []
    for _ in range(count):
        fds.append(proc.num_fds())
        rss.append(proc.memory_info().rss)
        zombies.append(sum(1 for kid in proc.children() if _status(kid) == psutil.STATUS_ZOMBIE))
        time.sleep(0.01)
    return min(fds), min(rss), min(zombies)


def test_start_restarting_a_crashing_process_200_times_leaks_nothing(tmp_path: Path):
    base = tmp_path / "tmp"
    base.mkdir()
    (tmp_path / "Procfile").write_text("crash: false\n")
    (tmp_path / "graceshell.yml").write_text(
        f"processes:\n  crash:\n    restart: always\n    restart_limit: {RESTARTS * 5}\n")
    err_path = tmp_path / "start.stderr"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", START_WITH_SHORT_BACKOFF, "start", "--platform", "none",
                                 "--log-format", "json", "--config", "graceshell.yml"],
                                cwd=tmp_path, env=clean_env(TMPDIR=str(base)), stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
    me = psutil.Process(proc.pid)

    def restarts() -> int:
        return err_path.read_bytes().count(b'"graceshell.restart"')

    try:
        wait_for(lambda: restarts() >= RESTARTS_WARM_UP, 60, f"{RESTARTS_WARM_UP} restarts")
        first = sample(me)
        wait_for(lambda: restarts() >= RESTARTS, 120, f"{RESTARTS} restarts")
        last = sample(me)
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print(f"after {RESTARTS_WARM_UP} restarts (fds, rss, zombies): {first}; after {restarts()}: {last}")
    assert last[0] <= first[0], "file descriptors grew"
    assert last[1] - first[1] < RSS_SLACK, "memory grew"
    assert last[2] <= 1, "zombies piled up"  # at most the one that just crashed, not yet reaped
    assert list(base.iterdir()) == []
    summary = [json.loads(line) for line in err_path.read_text().splitlines() if '"graceshell.summary"' in line]
    assert summary and summary[0]["processes"][0]["restarts"] >= RESTARTS
