"""`graceshell start`: a whole Procfile, each process under its own graceshell."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import clean_env, wait_for

LINE = re.compile(r"^\d\d:\d\d:\d\d (\S+)\s* \| (.*)$")


def start(tmp: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "graceshell", "start", "--platform", "none", *args], cwd=tmp,
                            env=env or clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def lines_of(out: bytes) -> list[tuple[str, str]]:
    found = []
    for raw in out.decode().splitlines():
        match = LINE.match(raw)
        assert match, f"unprefixed or broken line: {raw!r}"
        found.append((match.group(1), match.group(2)))
    return found


def events(err: bytes, name: str) -> list[dict]:
    return [e for e in (json.loads(line) for line in err.decode().splitlines() if line.startswith("{"))
            if e["event"] == name]


def test_all_start_with_port_and_name_and_ctrl_c_stops_them(tmp_path):
    (tmp_path / "Procfile").write_text('web: echo "web $PORT $GRACESHELL_PROCESS"; exec sleep 30\n'
                                       'worker: echo "worker $PORT $GRACESHELL_PROCESS"; exec sleep 30\n')
    proc = start(tmp_path, "-c", "worker=2")
    time.sleep(2.5)
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches start's whole group
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert time.monotonic() - started < 5
    said = {text for name, text in lines_of(out) if not text.startswith("{")}
    assert said == {"web 5000 web.1", "worker 5100 worker.1", "worker 5101 worker.2"}
    (summary,) = events(err, "graceshell.summary")
    assert [(p["process"], p["exit_code"]) for p in summary["processes"]] == [
        ("web.1", 130), ("worker.1", 130), ("worker.2", 130)]
    reports = events(err, "graceshell.exit")  # every graceshell event on stderr, the process a key
    assert sorted(r["process"] for r in reports) == ["web.1", "worker.1", "worker.2"]
    assert all(line.startswith(b"{") for line in err.splitlines())  # JSON, each line of it
    assert all(r["outcome"] == "clean" for r in reports)


def test_lines_stay_whole_and_none_is_lost_when_two_processes_flood(tmp_path):
    count = 20000
    flood = (f"{sys.executable} -c \"import sys; [sys.stdout.write('%s-%06d-' % (sys.argv[1], i) + 'x' * 200 "
             f"+ chr(10)) for i in range({count})]\"")
    # Each floods, then waits: one that ended would stop the other (honcho's rule) mid-flood.
    (tmp_path / "Procfile").write_text(f"a: {flood} A; exec sleep 60\nb: {flood} B; exec sleep 60\n")
    out_path = tmp_path / "out.txt"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "graceshell", "start", "--platform", "none"], cwd=tmp_path,
                                env=clean_env(), stdout=out, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: out_path.read_bytes().count(b"x" * 200 + b"\n") >= 2 * count, 60, "both floods written")
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    got = {"a.1": [], "b.1": []}
    for name, text in lines_of(out_path.read_bytes()):
        if not text.startswith("{"):
            got[name].append(text)
    for name, tag in (("a.1", "A"), ("b.1", "B")):
        assert got[name] == [f"{tag}-{i:06d}-" + "x" * 200 for i in range(count)]


def test_a_stubborn_process_is_killed_at_the_budget(tmp_path):
    (tmp_path / "Procfile").write_text("stubborn: trap '' INT TERM; while :; do sleep 0.1; done\n"
                                       "web: exec sleep 30\n")
    proc = start(tmp_path, "--budget", "1s")
    time.sleep(2)
    began = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - began < 4
    assert proc.returncode == 137, err
    (summary,) = events(err, "graceshell.summary")
    assert {p["process"]: p["exit_code"] for p in summary["processes"]} == {"stubborn.1": 137, "web.1": 143}


def test_one_crashing_process_stops_the_rest(tmp_path):
    (tmp_path / "Procfile").write_text("crash: sleep 1; exit 3\nweb: exec sleep 30\n")
    began = time.monotonic()
    proc = start(tmp_path)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    assert time.monotonic() - began < 10
    (summary,) = events(err, "graceshell.summary")
    assert summary["cause"] == "crash.1"
    assert {p["process"]: p["exit_code"] for p in summary["processes"]} == {"crash.1": 3, "web.1": 143}


def test_a_restarting_process_backs_off_and_gives_up(tmp_path):
    (tmp_path / "Procfile").write_text("flaky: echo run; exit 1\nweb: exec sleep 30\n")
    (tmp_path / "graceshell.yml").write_text("processes:\n  flaky:\n    restart: on-failure\n    restart_limit: 2\n")
    began = time.monotonic()
    proc = start(tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert 3 <= time.monotonic() - began < 15  # waited 1 s, then 2 s
    assert [e["in_s"] for e in events(err, "graceshell.restart")] == [1.0, 2.0]
    (gave_up,) = events(err, "graceshell.give_up")
    assert gave_up["process"] == "flaky.1" and gave_up["restarts"] == 2
    assert [text for name, text in lines_of(out) if name == "flaky.1" and text == "run"] == ["run"] * 3
    (summary,) = events(err, "graceshell.summary")
    assert summary["processes"][0] == {"process": "flaky.1", "exit_code": 1, "restarts": 2, "gave_up": True}


def test_bad_procfile_and_flags_are_one_line_exit_2(tmp_path):
    (tmp_path / "Procfile").write_text("web: exec sleep 1\nnot a process line\n")
    proc = start(tmp_path)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 2 and err == b"graceshell: error: Procfile:2: expected NAME: COMMAND\n"
    (tmp_path / "Procfile").write_text("web: exec sleep 1\n")
    for args, message in ((["-c", "web=x"], "--concurrency: 'web=x' is not TYPE=N"),
                          (["-c", "db=1"], "--concurrency: no process type 'db'"),
                          (["nosuch"], "no process type 'nosuch' (types: web)")):
        proc = start(tmp_path, *args)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 2 and message in err.decode() and err.count(b"\n") == 1, err
    for port in ("abc", "99999", "５０００"):
        proc = start(tmp_path, env=clean_env(PORT=port))
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 2 and err.startswith(b"graceshell: error: $PORT is ") and err.count(b"\n") == 1
    proc = start(tmp_path, "-p", "0")
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 2 and b"'--port': 0 is not in the range" in err and err.count(b"\n") == 1, err


INTERNAL_ERROR = """
import sys, time
from graceshell.commands import start
from graceshell.logs import make_logger

def broken_loop(self, read_fd, stops):
    time.sleep(1.0)  # every instance has started its tree
    raise RuntimeError("a bug of ours")

start.Starter._loop = broken_loop
instances = [start.Instance(f"w.{n}", ["sh", "-c", f"sleep {sys.argv[1]} & sleep {sys.argv[1]}"], {}, "no", 5, "")
             for n in (1, 2)]
sys.exit(start.Starter(instances, make_logger("json"), sys.stdout.buffer, colour=False).run())
"""


def test_an_internal_error_kills_every_process_tree_it_started():
    import psutil

    marker = str(3000 + os.getpid() % 1000)  # a sleep length no other test uses
    proc = subprocess.run([sys.executable, "-c", INTERNAL_ERROR, marker], env=clean_env(), capture_output=True,
                          timeout=30)
    assert proc.returncode == 70, proc.stderr
    assert events(proc.stderr, "graceshell.internal_error")

    def sleepers() -> list[int]:
        found = []
        for each in psutil.process_iter(["cmdline"]):
            if each.info["cmdline"] == ["sleep", marker]:
                found.append(each.pid)
        return found

    wait_for(lambda: not sleepers(), 5, "every sleep killed")


def test_processes_that_end_together_keep_their_true_codes_and_reports(tmp_path):
    """Four of five end at once, while start stops the others: none is
    signalled to death before it has a report, none after its report; each
    code in the summary is the one its own report gives."""
    (tmp_path / "Procfile").write_text('a: no-such-command-here\nb: sh -c "exit 5"\nc: sleep 100\n'
                                       'd: sh -c "exit 6"\ne: python3 -c "import sys; sys.exit(7)"\n')
    proc = start(tmp_path, "--log-format", "json")
    out, err = proc.communicate(timeout=60)
    reports = {r["process"]: r for r in events(err, "graceshell.exit")}
    assert sorted(reports) == ["a.1", "b.1", "c.1", "d.1", "e.1"], err.decode()
    (summary,) = events(err, "graceshell.summary")
    assert {p["process"]: p["exit_code"] for p in summary["processes"]} == {
        name: report["exit_code"] for name, report in reports.items()}
    assert reports["a.1"]["exit_code"] == 127 and reports["c.1"]["exit_code"] == 143
    assert reports["b.1"]["exit_code"] in (5, 143) and reports["d.1"]["exit_code"] in (6, 143)
    assert proc.returncode == summary["exit_code"] == reports[summary["cause"]]["exit_code"]


def test_in_logfmt_every_event_is_on_stderr_with_the_process_a_key(tmp_path):
    (tmp_path / "Procfile").write_text('once: echo "said once" >&2\n')
    proc = start(tmp_path, "--log-format", "logfmt")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert [text for _, text in lines_of(out)] == ["said once"]  # the worker's own stderr stays output
    lines = err.decode().splitlines()
    assert lines and all(line.startswith("event=graceshell.") for line in lines), lines
    assert any(line.startswith("event=graceshell.exit process=once.1 outcome=exited") for line in lines), lines
