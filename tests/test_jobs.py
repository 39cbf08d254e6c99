"""The job ledger, the shutdown notice, the orphan report and the on_orphans hook."""

import json
import os
import signal
import sys
import time

import pytest

from conftest import alive, wait_for

NONE = ("--platform", "none")


def test_job_left_by_a_forced_kill_is_reported_with_its_id(graceshell, worker):
    run = graceshell(*NONE, "--budget", "0.8s", *worker("--job", "job-41:reports.build", "--ignore", "TERM"))
    ready = run.ready()
    jobs_dir = run.event("graceshell.start")["jobs_dir"]
    assert os.listdir(jobs_dir)  # the job is in flight
    assert oct(os.stat(os.path.dirname(jobs_dir)).st_mode & 0o777) == "0o700"
    run.kill(signal.SIGTERM)
    assert run.wait() == 137
    report = run.report()
    (job,) = report["orphaned_jobs"]
    assert (job["id"], job["name"], job["pid"], job["queue"]) == ("job-41", "reports.build", ready["pid"], "default")
    assert job["running_s"] > 0.5
    (event,) = [e for e in run.events() if e["event"] == "graceshell.orphaned_job"]
    assert event["id"] == "job-41" and event["level"] == "warning"
    assert report["level"] == "warning"
    assert not os.path.exists(os.path.dirname(jobs_dir))  # the run directory is removed at exit


def test_a_finished_job_is_not_reported(graceshell, worker):
    run = graceshell(*NONE, *worker("--job", "quick:emails.send", "--job-seconds", "0.2", "--exit-on", "TERM"))
    run.ready()
    time.sleep(0.5)
    run.kill(signal.SIGTERM)
    assert run.wait() == 0
    assert run.report()["orphaned_jobs"] == []


def test_shutdown_notice_is_written_before_the_worker_hears_of_the_stop(graceshell, worker):
    run = graceshell("--platform", "heroku", *worker("--exit-on", "TERM"))
    ready = run.ready()
    sent_at = time.time()
    run.kill(signal.SIGTERM)
    assert run.wait() == 0
    seen = json.loads((run.state / f"notice-{ready['pid']}.json").read_text())
    assert seen["requested"] is True
    notice = seen["notice"]
    assert notice["signal"] == "TERM"
    assert abs(notice["received_at"] - sent_at) < 1.0
    assert notice["deadline"] == pytest.approx(notice["received_at"] + 25.0, abs=0.01)
    assert notice["platform_deadline"] == pytest.approx(notice["received_at"] + 30.0, abs=0.01)
    assert 23.0 < seen["remaining"] <= 25.0


def test_corrupt_ledger_file_is_reported_not_fatal(graceshell, worker):
    run = graceshell(*NONE, *worker("--corrupt-job", "--exit-on", "TERM"))
    run.ready()
    run.kill(signal.SIGTERM)
    assert run.wait() == 0
    (job,) = run.report()["orphaned_jobs"]
    assert job["file"] == "broken.json" and job["error"].startswith("corrupt ledger file")


def test_on_orphans_hook_gets_the_report_on_stdin(graceshell, worker, tmp_path):
    out = tmp_path / "hook.json"
    hook = f'cat > {out}; echo "$GRACESHELL_ORPHANED_JOBS" > {out}.count'
    run = graceshell(*NONE, "--budget", "0.5s", "--on-orphans", hook,
                     *worker("--job", "a'b;$(touch pwned):x", "--ignore", "TERM"))
    run.ready()
    run.kill(signal.SIGTERM)
    assert run.wait() == 137
    received = json.loads(out.read_text())
    assert [job["id"] for job in received["orphaned_jobs"]] == ["a'b;$(touch pwned)"]
    assert received["outcome"] == "killed" and received["process"] == "python"
    assert (tmp_path / "hook.json.count").read_text() == "1\n"
    assert not (tmp_path / "pwned").exists()  # job data never reaches a shell
    hook_event = run.event("graceshell.on_orphans")
    assert hook_event["outcome"] == "ok" and hook_event["exit_code"] == 0


def test_on_orphans_hook_is_killed_when_the_platform_deadline_comes(graceshell, worker, tmp_path):
    pid_file = tmp_path / "hook.pid"
    hook = f"sleep 60 & echo $! > {pid_file}; wait"
    run = graceshell("--platform", "heroku", "--platform-timeout", "2.5s", "--budget", "0.5s",
                     "--on-orphans", hook, *worker("--job", "j1:x", "--ignore", "TERM"))
    run.ready()
    start = run.kill(signal.SIGTERM)
    assert run.wait() == 137
    elapsed = time.monotonic() - start
    assert elapsed < 2.5  # the hook was cut before the platform's own kill
    hook_event = run.event("graceshell.on_orphans")
    assert hook_event["outcome"] == "killed" and hook_event["timeout_s"] < 2.0
    assert not alive(int(pid_file.read_text()))


LEAKY_WORKER = """
import json, os, signal, sys, time
jobs_dir = os.environ["GRACESHELL_JOBS_DIR"]
for number in range(int(sys.argv[2])):  # a worker that never removes its jobs' files
    with open(os.path.join(jobs_dir, f"{number:05}.json"), "w") as entry:
        json.dump({"id": f"job-{number}", "name": "leak", "pid": os.getpid(), "started_at": time.time()}, entry)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
with open(os.path.join(sys.argv[1], "ready.json"), "w") as ready:
    json.dump({"pid": os.getpid()}, ready)
while True:
    signal.pause()
"""


def test_a_ledger_too_large_to_read_is_counted_not_read(graceshell, tmp_path):
    """A worker that leaks ledger files must not delay the exit report past the
    platform's deadline: graceshell names the first thousand and counts the rest."""
    from graceshell.engine.ledger import MAX_ORPHANS_READ

    script = tmp_path / "leaky.py"
    script.write_text(LEAKY_WORKER)
    leaked = MAX_ORPHANS_READ + 500
    run = graceshell(*NONE, "--on-orphans", f'echo "$GRACESHELL_ORPHANED_JOBS" > {tmp_path}/count',
                     "--", sys.executable, str(script), str(tmp_path), str(leaked))
    run.ready(timeout=30)
    run.kill(signal.SIGTERM)
    assert run.wait() == 0
    report = run.report()
    assert len(report["orphaned_jobs"]) == MAX_ORPHANS_READ and report["orphaned_jobs_unread"] == 500
    assert report["orphaned_jobs"][0]["id"] == "job-0"  # in the order of the files' names
    unread = run.event("graceshell.orphaned_jobs_unread")
    assert (unread["count"], unread["read"], unread["level"]) == (500, MAX_ORPHANS_READ, "warning")
    assert len([e for e in run.events() if e["event"] == "graceshell.orphaned_job"]) == MAX_ORPHANS_READ
    assert (tmp_path / "count").read_text() == f"{leaked}\n"


def test_the_orphan_report_reads_at_most_its_byte_budget(tmp_path):
    from graceshell.engine.ledger import MAX_ORPHAN_BYTES, read_entries
    from graceshell.jobs import MAX_ENTRY

    big = json.dumps({"id": "x", "name": "big", "args": "a" * (MAX_ENTRY - 100)})
    files = MAX_ORPHAN_BYTES // len(big) + 10
    for number in range(files):
        (tmp_path / f"{number:04}.json").write_text(big)
    found, unread = read_entries(str(tmp_path), time.time())
    assert len(found) + unread == files and unread > 0
    assert (len(found) - 1) * len(big) < MAX_ORPHAN_BYTES <= len(found) * len(big)


def test_a_job_field_named_like_a_log_key_is_renamed_in_the_report(tmp_path):
    """A job's `process` would replace graceshell's own in the orphaned_job event; `exc_info` would be
    rendered as a traceback."""
    from graceshell.engine.ledger import read_entries

    (tmp_path / "1-j.json").write_text(json.dumps({"id": "j", "process": "mine", "exc_info": True, "event": "x"}))
    (entry,), _ = read_entries(str(tmp_path), time.time())
    assert (entry["job_process"], entry["job_exc_info"], entry["job_event"]) == ("mine", True, "x")
    assert not {"process", "exc_info", "event"} & set(entry)


def test_no_hook_without_orphans(graceshell, worker, tmp_path):
    run = graceshell(*NONE, "--on-orphans", f"touch {tmp_path}/ran", *worker("--exit-on", "TERM"))
    run.ready()
    run.kill(signal.SIGTERM)
    assert run.wait() == 0
    assert not (tmp_path / "ran").exists()


def test_busy_events_are_logged_when_jobs_come_and_go(graceshell, worker):
    run = graceshell(*NONE, *worker("--job", "j:x", "--job-seconds", "0.3", "--exit-on", "TERM"))
    run.ready()
    wait_for(lambda: len([e for e in run.events() if e["event"] == "graceshell.busy"]) == 2, 5, "busy events")
    run.kill(signal.SIGTERM)
    assert run.wait() == 0
    busy = [e for e in run.events() if e["event"] == "graceshell.busy"]
    assert [(e["busy"], e["jobs"]) for e in busy] == [(True, 1), (False, 0)]


def test_helpers_are_no_ops_outside_graceshell(monkeypatch, tmp_path):
    from graceshell import jobs, shutdown

    monkeypatch.delenv("GRACESHELL_JOBS_DIR", raising=False)
    monkeypatch.delenv("GRACESHELL_SHUTDOWN_FILE", raising=False)
    with jobs.track("x", "y") as tracker:
        assert tracker.path is None
    assert shutdown.requested() is False and shutdown.remaining() is None and shutdown.notice() is None


def test_helpers_inside_graceshell(monkeypatch, tmp_path):
    from graceshell import jobs, shutdown

    monkeypatch.setenv("GRACESHELL_JOBS_DIR", str(tmp_path))
    monkeypatch.setenv("GRACESHELL_SHUTDOWN_FILE", str(tmp_path / "stop.json"))

    @jobs.track(name="tasks.add")
    def add(a, b):
        (entry,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
        assert entry["name"] == "tasks.add" and entry["pid"] == os.getpid() and len(entry["id"]) == 16
        return a + b

    assert add(1, 2) == 3
    assert list(tmp_path.glob("*.json")) == []  # removed when the job ended
    assert shutdown.requested() is False
    (tmp_path / "stop.json").write_text(json.dumps({"signal": "TERM", "deadline": time.time() + 10}))
    assert shutdown.requested() is True
    assert 9 < shutdown.remaining() <= 10


def test_the_written_notice_is_the_json_of_the_notice(tmp_path, monkeypatch):
    from hypothesis import given, settings, strategies as st

    from graceshell.engine.ledger import Ledger

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    ledger = Ledger()
    stamp = st.floats(min_value=0, max_value=4e9, allow_nan=False)

    @settings(max_examples=50, deadline=None)
    @given(signal=st.sampled_from(["TERM", "INT", "QUIT", "RTMIN+2", "64"]), received=stamp, deadline=stamp,
           platform=st.none() | stamp, step=st.integers(0, 20), escalated=st.none() | stamp)
    def same_as_json(signal, received, deadline, platform, step, escalated):
        notice = {"signal": signal, "received_at": round(received, 6), "deadline": round(deadline, 6),
                  "platform_deadline": platform, "step": step, "escalated_at": escalated}
        ledger.write_notice(notice)
        with open(ledger.shutdown_file) as written:
            assert json.loads(written.read()) == notice

    try:
        same_as_json()
    finally:
        ledger.remove()


def test_plain_entries_skip_the_re_parse_and_read_back_as_written(tmp_path):
    """The fast path (flat text, numbers, booleans) writes what the reader takes
    back unchanged; anything else takes the careful path, as before."""
    from graceshell.engine.ledger import read_entries
    from graceshell.jobs import _encode_plain, write_entry

    plain = {"id": "a/b", "name": "tasks.x", "pid": 7, "started_at": 1.5, "queue": "q", "acks_late": False,
             "retries": None, "big": 2**70, "text": "caf\u00e9 \udc80"}
    assert _encode_plain(plain) is not None
    path = write_entry(str(tmp_path), plain)
    assert os.path.basename(path) == f"{os.getpid()}-a_b.json"
    (entry,), _ = read_entries(str(tmp_path), 2.0)
    assert {k: entry[k] for k in ("id", "name", "pid", "queue", "acks_late", "retries", "big")} == \
        {"id": "a/b", "name": "tasks.x", "pid": 7, "queue": "q", "acks_late": False, "retries": None, "big": 2**70}
    assert entry["text"].startswith("caf\u00e9 \ufffd")  # a lone surrogate is repaired by the reader, as before
    for odd in ({"id": "n", "x": float("nan")}, {"id": "t", "x": (1, 2)}, {"id": "s", "x": "y" * 70000},
                {"id": "k", 3: "int key"}):
        assert _encode_plain(odd) is None


def test_deferred_entries_are_written_only_for_jobs_still_running(monkeypatch, tmp_path):
    """The integrations' track: a short job never touches the ledger; one still
    running after WRITE_AFTER is written by the process's writer thread;
    `update` (the cold step marking a job interrupted) writes at once."""
    from graceshell import jobs, jobwriter

    monkeypatch.setenv("GRACESHELL_JOBS_DIR", str(tmp_path))
    with jobs.track_deferred("quick", "tasks.quick") as quick:
        assert quick.path is None
    assert os.listdir(tmp_path) == []
    with jobs.track_deferred("slow", "tasks.slow", queue="q") as slow:
        wait_for(lambda: slow.path is not None, 5, "the slow job's entry")
        assert slow.path is not None
        entry = json.loads(open(slow.path).read())
        assert (entry["id"], entry["name"], entry["queue"], entry["pid"]) == ("slow", "tasks.slow", "q", os.getpid())
    assert os.listdir(tmp_path) == []  # removed at its end
    cut = jobs.track_deferred("cut", "tasks.cut").__enter__()
    jobs.update("cut", interrupted=True, requeued=True)
    (name,) = os.listdir(tmp_path)
    assert json.loads((tmp_path / name).read_text())["requeued"] is True
    assert jobwriter.pending_ids() == ["cut"]
    jobs.forget("cut")
    assert os.listdir(tmp_path) == [] and jobwriter.pending_ids() == []
    del cut


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_deferred_entries_in_a_forked_child_are_the_childs(monkeypatch, tmp_path):
    """A prefork pool process or an RQ work horse: its own writer thread, none of the parent's jobs."""
    from graceshell import jobs, jobwriter

    monkeypatch.setenv("GRACESHELL_JOBS_DIR", str(tmp_path))
    parent = jobs.track_deferred("parent-job", "x").__enter__()
    pid = os.fork()
    if pid == 0:  # the child: exits with its verdict
        ok = jobwriter.pending_ids() == []
        with jobs.track_deferred("child-job", "y"):
            deadline = time.monotonic() + 5
            while not any(n.endswith("child-job.json") for n in os.listdir(tmp_path)) and time.monotonic() < deadline:
                time.sleep(0.02)
            ok = ok and any(n.startswith(f"{os.getpid()}-child-job") for n in os.listdir(tmp_path))
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    parent.__exit__(None, None, None)
    assert os.listdir(tmp_path) == []


def test_a_deferred_job_just_started_at_the_stop_is_named_in_the_report(graceshell, tmp_path):
    """The stop comes a moment after the job's start, before its entry is due:
    the job is still in flight when the kill comes, so it is in the report."""
    script = tmp_path / "late.py"
    script.write_text(
        "import signal, sys, time\n"
        "from graceshell import jobs\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "jobs.track_deferred('job-7', 'reports.build', queue='default').__enter__()\n"
        "open(sys.argv[1], 'w').close()\n"
        "time.sleep(60)\n")
    started = tmp_path / "started"
    run = graceshell(*NONE, "--budget", "0.8s", "--", sys.executable, str(script), str(started))
    wait_for(started.exists, 30, "the job's start")
    run.kill(signal.SIGTERM)
    assert run.wait() == 137
    (job,) = run.report()["orphaned_jobs"]
    assert (job["id"], job["name"], job["queue"]) == ("job-7", "reports.build", "default")


def test_the_deferred_writer_parks_while_only_written_jobs_run(monkeypatch, tmp_path):
    """A long job whose entry is written leaves the writer thread nothing to do:
    it waits for the next job's start instead of waking (or spinning); that start wakes it."""
    from graceshell import jobs, jobwriter

    monkeypatch.setenv("GRACESHELL_JOBS_DIR", str(tmp_path))
    monkeypatch.setattr(jobwriter, "PARK_AFTER", 0.3)
    with jobs.track_deferred("long", "x") as long:
        wait_for(lambda: jobwriter._writer is not None and jobwriter._writer.parked, 10, "the writer parked")
        assert long.path is not None
        cpu = time.process_time()
        time.sleep(0.5)
        assert time.process_time() - cpu < 0.2  # a thread that spun would take the whole 0.5 s
        with jobs.track_deferred("next", "y") as following:
            wait_for(lambda: following.path is not None, 10, "the next job's entry")
    assert os.listdir(tmp_path) == []
