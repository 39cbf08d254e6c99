"""graceshell.busy under a stream of jobs: the ledger's inotify wakes are
coalesced, busy is still reported at once and idle once the ledger is still."""

import os
import selectors
import signal
import sys
import textwrap

import pytest

from conftest import wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify")


class Events:
    """A logger that keeps graceshell.busy's events (BusyWatch logs through `info` alone)."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, int]] = []

    def info(self, event: str, busy: bool, jobs: int) -> None:
        assert event == "graceshell.busy"
        self.seen.append((busy, jobs))


class LedgerDir:
    """The part of engine.ledger.Ledger that BusyWatch uses, on a plain directory."""

    def __init__(self, path: str) -> None:
        from graceshell.engine.ledger import Ledger

        self.jobs_dir, self.watch_fd = path, None
        self.count = lambda: Ledger.count(self)  # type: ignore[arg-type]
        self.watch = lambda: Ledger.watch(self)  # type: ignore[arg-type]
        self.drain_watch = lambda: Ledger.drain_watch(self)  # type: ignore[arg-type]


def test_one_wake_then_looks_at_most_every_interval_and_none_when_quiet(tmp_path):
    from graceshell.engine.busy import BUSY_INTERVAL, IDLE_SETTLE, LOOK_INTERVAL, BusyWatch
    from graceshell.jobs import write_entry

    log, ledger = Events(), LedgerDir(str(tmp_path))
    with selectors.DefaultSelector() as selector:
        watch = BusyWatch(ledger, log)  # type: ignore[arg-type]
        fd = watch.start(selector, 100.0)
        assert fd is not None and watch.due() is None  # idle: nothing to wake for
        path = write_entry(str(tmp_path), {"id": "a", "name": "x", "pid": 1, "started_at": 0})
        assert [key.fd for key, _ in selector.select(5)] == [fd]
        watch.on_readable(100.0)
        assert log.seen == [(True, 1)]  # busy at once
        # Out of the selector until the next look: a stream of jobs wakes nobody.
        for n in range(50):
            os.unlink(write_entry(str(tmp_path), {"id": f"b{n}", "name": "x", "pid": 1, "started_at": 0}))
        assert selector.select(0) == []
        assert watch.due() == 100.0 + LOOK_INTERVAL
        os.unlink(path)
        watch.on_due(100.0 + LOOK_INTERVAL)  # changed since: still looking, idle not yet
        assert log.seen == [(True, 1)]
        watch.on_due(100.0 + 2 * LOOK_INTERVAL)  # quiet: back in the selector, the settle goes on
        assert watch.listening and watch.due() == 100.0 + LOOK_INTERVAL + IDLE_SETTLE
        watch.on_due(watch.due())  # settled, but within a second of the busy event: then
        assert log.seen == [(True, 1)] and watch.due() == 100.0 + BUSY_INTERVAL
        watch.on_due(watch.due())
        assert log.seen == [(True, 1), (False, 0)]
        assert watch.due() is None  # idle and quiet: no timer at all
        # A dot-file (a write in progress) wakes the selector but is no job.
        (tmp_path / ".c.json.tmp").write_text("{}")
        assert [key.fd for key, _ in selector.select(5)] == [fd]
        watch.on_readable(200.0)
        assert watch.listening and watch.due() is None and log.seen == [(True, 1), (False, 0)]


def test_jobs_that_come_and_go_between_looks_are_busy(tmp_path):
    from graceshell.engine.busy import LOOK_INTERVAL, BusyWatch
    from graceshell.jobs import write_entry

    log, ledger = Events(), LedgerDir(str(tmp_path))
    with selectors.DefaultSelector() as selector:
        watch = BusyWatch(ledger, log)  # type: ignore[arg-type]
        watch.start(selector, 10.0)
        os.unlink(write_entry(str(tmp_path), {"id": "a", "name": "x", "pid": 1, "started_at": 0}))
        selector.select(5)
        watch.on_readable(10.0)
        assert log.seen == [(True, 0)]  # a job ran, though it is gone by the look
        os.unlink(write_entry(str(tmp_path), {"id": "b", "name": "x", "pid": 1, "started_at": 0}))
        watch.on_due(10.0 + LOOK_INTERVAL)  # jobs keep coming: never idle in between
        assert log.seen == [(True, 0)] and watch.idle_since == 10.0 + LOOK_INTERVAL


WORKER = textwrap.dedent("""
    import sys, time
    from graceshell import jobs
    # A busy worker: short jobs, back to back, for two seconds; then idle.
    end = time.monotonic() + 2.0
    done = 0
    while time.monotonic() < end:
        with jobs.track(f"job-{done}", "tasks.noop"):
            time.sleep(0.0005)
        done += 1
    print("done", done, flush=True)
    with open(sys.argv[1], "w") as out:
        out.write(str(done))
    time.sleep(60)
""")


def _switches(pid: int) -> int:
    with open(f"/proc/{pid}/task/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("voluntary_ctxt_switches"))


def test_a_stream_of_short_jobs_wakes_graceshell_a_few_times_a_second(graceshell, tmp_path):
    script, done = tmp_path / "stream.py", tmp_path / "done"
    script.write_text(WORKER)
    run = graceshell("--platform", "none", "--", sys.executable, str(script), str(done))
    wait_for(lambda: "graceshell.start" in run.stderr(), 30, "graceshell.start")
    gs_pid = run.event("graceshell.start")["graceshell_pid"]
    before = _switches(gs_pid)
    wait_for(done.exists, 30, "the stream of jobs")
    wakes = _switches(gs_pid) - before
    jobs = int(done.read_text())
    wait_for(lambda: len([e for e in run.events() if e["event"] == "graceshell.busy"]) == 2, 10, "busy, then idle")
    run.kill(signal.SIGTERM)
    run.wait()
    busy = [(e["busy"], e["jobs"] > 0) for e in run.events() if e["event"] == "graceshell.busy"]
    assert busy[0][0] is True and busy[1] == (False, False) and len(busy) == 2
    # Each job changes the ledger four times; graceshell woke for a few looks a second.
    assert jobs > 100 and wakes < 60, (jobs, wakes)
