"""`graceshell run` with real processes and real signals."""

import json
import os
import signal
import stat
import sys
import time

import pytest

from conftest import alive, clean_env, is_guard, wait_for

NONE = ("--platform", "none")


# -- exit status ----------------------------------------------------------------

@pytest.mark.parametrize("command, code", [
    (["true"], 0),
    (["sh", "-c", "exit 3"], 3),
    (["sh", "-c", "kill -USR1 $$"], 128 + signal.SIGUSR1),
    (["sh", "-c", "kill -KILL $$"], 137),
])
def test_exit_status_is_the_workers(graceshell, command, code):
    run = graceshell(*NONE, "--", *command)
    assert run.wait() == code
    report = run.report()
    assert report["exit_code"] == code
    assert report["outcome"] == ("exited" if code == 0 else "crashed")


@pytest.mark.parametrize("log_format", ["json", "logfmt"])
def test_command_not_found_is_127_with_its_report_in_the_log_format(graceshell, log_format):
    run = graceshell(*NONE, "--log-format", log_format, "--", "no-such-command-here")
    assert run.wait() == 127
    (line,) = run.stderr().splitlines()
    if log_format == "json":
        report = json.loads(line)
        assert report["event"] == "graceshell.exit" and report["outcome"] == "not_started"
        assert report["exit_code"] == 127 and report["error"] == "no-such-command-here: command not found"
        assert report["pid"] is None and report["process"] == "no-such-command-here"
    else:
        assert line.startswith("event=graceshell.exit process=no-such-command-here outcome=not_started "
                               "exit_code=127 error=\"no-such-command-here: command not found\"")


def test_not_executable_is_126(graceshell, tmp_path):
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(stat.S_IRUSR | stat.S_IWUSR)
    run = graceshell(*NONE, "--", str(script))
    assert run.wait() == 126
    report = run.report()
    assert report["outcome"] == "not_started" and report["exit_code"] == 126
    assert report["error"] == f"{script}: cannot execute: permission denied"


@pytest.mark.parametrize("args, needle", [
    ([], "no command to run"),
    (["--budget", "soon", "--", "true"], "--budget"),
    (["--budget", "30s", "--platform", "heroku", "--", "true"], "shorter than the platform timeout"),
    (["--ladder", "QUIT@40s", "--", "true"], "after the budget"),
    (["--ladder", "QUIT", "--", "true"], "SIGNAL@OFFSET"),
    (["--ladder", "QUIT@10s,TERM@5s", "--", "true"], "time order"),
    (["--ladder", "KILL@5s,QUIT@10s", "--", "true"], "last step"),
    (["--remap", "TERM", "--", "true"], "FROM:TO"),
    (["--remap", "TERM:SIGNOPE", "--", "true"], "unknown signal"),
    (["--platform", "herokuu", "--", "true"], "unknown platform"),
    (["--second-signal", "panic", "--", "true"], "--second-signal"),
    (["--stop-signals", "KILL", "--", "true"], "cannot be caught"),
    (["--no-such-flag", "--", "true"], "no-such-flag"),
])
def test_usage_errors_are_one_line_exit_2(graceshell, args, needle):
    run = graceshell(*NONE, *args)  # a later --platform wins
    assert run.wait() == 2
    err = run.stderr()
    assert err.count("\n") == 1 and err.startswith("graceshell: error: "), err
    assert needle in err and "Traceback" not in err


# -- forwarding and shielding ------------------------------------------------------

def assert_child_termed_only_as_leftover(run, ready, linger):
    """The child's only TERM is graceshell's leftover TERM, `linger` after the worker left."""
    (worker_term, at_worker), = run.signals(ready["pid"])
    (child_term, at_child), = run.signals(ready["child"])
    assert worker_term == child_term == "TERM"
    assert at_child - at_worker >= linger - 0.05
    assert not alive(ready["child"])
    assert [(e["pid"], e["signal"]) for e in run.report()["killed"]] == [(ready["child"], "TERM")]


def test_stop_signal_goes_to_the_main_worker_only(graceshell, worker):
    run = graceshell(*NONE, "--linger", "0.5s", *worker("--child", "--exit-on", "TERM"))
    ready = run.ready()
    run.kill(signal.SIGTERM)
    assert run.wait() == 0
    assert_child_termed_only_as_leftover(run, ready, 0.5)
    report = run.report()
    assert report["outcome"] == "clean" and report["stop_signal"] == "TERM"


def test_group_broadcast_does_not_reach_the_workers_children(graceshell, worker):
    run = graceshell(*NONE, "--linger", "0.5s", *worker("--child", "--exit-on", "TERM"))
    ready = run.ready()
    os.killpg(run.pid, signal.SIGTERM)  # what a terminal or a PID-1 group kill does
    assert run.wait() == 0
    assert_child_termed_only_as_leftover(run, ready, 0.5)  # the worker got one TERM, from graceshell


def test_remap_changes_what_the_worker_receives(graceshell, worker):
    run = graceshell(*NONE, "--remap", "TERM:QUIT", *worker("--exit-on", "QUIT"))
    ready = run.ready()
    run.kill(signal.SIGTERM)
    assert run.wait() == 0
    assert run.names(ready["pid"]) == ["QUIT"]
    assert run.report()["ladder"][0]["signal"] == "QUIT"


PASS_THROUGH = ["HUP", "USR1", "USR2", "WINCH", "TTIN", "TTOU", "CONT", "ALRM", "TSTP", "URG"]


def test_other_signals_pass_through_and_graceshell_keeps_running(graceshell, worker):
    run = graceshell(*NONE, *worker("--ignore", "HUP,USR1,USR2,ALRM", "--exit-on", "TERM"))
    ready = run.ready()
    for name in PASS_THROUGH:
        run.kill(getattr(signal, "SIG" + name))
        wait_for(lambda: name in run.names(ready["pid"]), 5, f"{name} at the worker")
        assert run.proc.poll() is None
    assert run.names(ready["pid"]) == PASS_THROUGH
    run.kill(signal.SIGTERM)
    assert run.wait() == 0
    forwards = [e["signal"] for e in run.events() if e["event"] == "graceshell.forward"]
    assert forwards == PASS_THROUGH + ["TERM"]


def test_inherited_ignored_signal_stays_ignored(tmp_path, worker):
    # nohup's promise: a HUP ignored by graceshell's parent is not forwarded.
    import subprocess

    code = ("import signal, os, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
            "os.execv(sys.executable, [sys.executable, '-m', 'graceshell', *sys.argv[1:]])")
    proc = subprocess.Popen([sys.executable, "-c", code, "run", *NONE, *worker("--exit-on", "TERM")],
                            env=clean_env(), stderr=subprocess.DEVNULL, start_new_session=True)
    ready_path = tmp_path / "ready.json"
    wait_for(ready_path.exists, 10, "worker ready")
    os.kill(proc.pid, signal.SIGHUP)
    time.sleep(0.3)
    assert proc.poll() is None
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(10) == 0
    import json

    pid = json.loads(ready_path.read_text())["pid"]
    assert (tmp_path / f"{pid}.log").read_text().split()[0] == "TERM"


# -- the ladder ----------------------------------------------------------------------

def test_ladder_steps_fire_at_their_offsets_then_the_tree_is_killed(graceshell, worker):
    run = graceshell(*NONE, "--budget", "1.2s", "--ladder", "QUIT@0.6s",
                     *worker("--child", "--ignore", "TERM,QUIT"))
    ready = run.ready()
    sent = run.kill(signal.SIGTERM)
    assert run.wait() == 137
    got = run.signals(ready["pid"])
    assert [name for name, _ in got] == ["TERM", "QUIT"]
    assert got[0][1] - sent < 0.15
    assert abs(got[1][1] - sent - 0.6) < 0.15
    report = run.report()
    assert report["outcome"] == "killed" and report["signal"] == "KILL"
    assert abs(report["shutdown_s"] - 1.2) < 0.3
    assert {e["pid"] for e in report["killed"]} >= {ready["pid"], ready["child"]}
    assert report["ladder"] == [{"at": 0.0, "signal": "TERM"}, {"at": 0.6, "signal": "QUIT"},
                                {"at": 1.2, "signal": "KILL"}]
    assert not alive(ready["child"])


def test_escalated_outcome_when_a_later_step_was_needed(graceshell, worker):
    run = graceshell(*NONE, "--budget", "3s", "--ladder", "QUIT@0.3s", *worker("--ignore", "TERM", "--exit-on", "QUIT"))
    run.ready()
    run.kill(signal.SIGTERM)
    assert run.wait() == 0
    report = run.report()
    assert report["outcome"] == "escalated" and report["steps_fired"] == 2


def test_ladder_relative_to_budget(graceshell, worker):
    run = graceshell(*NONE, "--budget", "2s", "--ladder", "TERM@0s,QUIT@budget-1.5s",
                     *worker("--ignore", "TERM", "--exit-on", "QUIT"))
    ready = run.ready()
    sent = run.kill(signal.SIGINT)
    assert run.wait() == 0
    got = run.signals(ready["pid"])
    assert [n for n, _ in got] == ["TERM", "QUIT"]
    assert abs(got[1][1] - sent - 0.5) < 0.15


def test_second_stop_signal_escalates_to_the_next_step(graceshell, worker):
    run = graceshell(*NONE, "--budget", "20s", *worker("--ignore", "TERM"))
    ready = run.ready()
    run.kill(signal.SIGTERM)
    wait_for(lambda: run.names(ready["pid"]), 5, "first TERM")
    start = time.monotonic()
    run.kill(signal.SIGINT)
    assert run.wait() == 137
    assert time.monotonic() - start < 5  # not the 20 s budget
    assert run.report()["outcome"] == "killed"


def test_second_signal_forward(graceshell, worker):
    run = graceshell(*NONE, "--second-signal", "forward", *worker("--ignore", "TERM", "--exit-on", "INT"))
    ready = run.ready()
    run.kill(signal.SIGTERM)
    wait_for(lambda: run.names(ready["pid"]), 5, "first TERM")
    run.kill(signal.SIGINT)
    assert run.wait() == 0
    assert run.names(ready["pid"]) == ["TERM", "INT"]


def test_second_signal_ignore(graceshell, worker):
    run = graceshell(*NONE, "--second-signal", "ignore", "--budget", "1s", *worker("--ignore", "TERM,INT"))
    ready = run.ready()
    run.kill(signal.SIGTERM)
    wait_for(lambda: run.names(ready["pid"]), 5, "first TERM")
    run.kill(signal.SIGINT)
    assert run.wait() == 137
    assert run.names(ready["pid"]) == ["TERM"]


def test_heroku_repeated_term_is_one_request_but_ctrl_c_escalates(graceshell, worker):
    env = clean_env(DYNO="worker.1")
    run = graceshell("--budget", "20s", *worker("--ignore", "TERM,INT"), env=env)
    ready = run.ready()
    run.kill(signal.SIGTERM)
    wait_for(lambda: run.names(ready["pid"]), 5, "first TERM")
    run.kill(signal.SIGTERM)  # Heroku may send its TERM again: not an escalation
    time.sleep(0.3)
    assert run.proc.poll() is None
    assert run.names(ready["pid"]) == ["TERM"]
    run.kill(signal.SIGINT)  # a person's Ctrl-C is
    assert run.wait() == 137
    actions = [e.get("action") for e in run.events() if e["event"] == "graceshell.signal"]
    assert actions == ["stop", "ignored", "escalate"]


# -- the tree ------------------------------------------------------------------------

def test_budget_kill_takes_the_escaped_setsid_daemon_too(graceshell, worker):
    run = graceshell(*NONE, "--budget", "0.8s", *worker("--child", "--daemon", "--ignore", "TERM"))
    ready = run.ready()
    assert os.getsid(ready["daemon"]) != os.getsid(ready["pid"])  # it really escaped
    run.kill(signal.SIGTERM)
    assert run.wait() == 137
    for pid in (ready["pid"], ready["child"], ready["daemon"]):
        assert not alive(pid), pid
    killed = {e["pid"]: e for e in run.report()["killed"]}
    assert {ready["pid"], ready["child"], ready["daemon"]} <= set(killed)
    assert all(e["signal"] == "KILL" and e["age_s"] >= 0 and e["cmd"] for e in killed.values())
    assert run.names(ready["daemon"]) == []


def test_leftovers_are_termed_after_linger_when_the_worker_exits(graceshell, worker):
    run = graceshell(*NONE, "--linger", "0.3s", *worker("--daemon", "--exit-after", "0.2"))
    ready = run.ready()
    assert run.wait() == 0
    assert not alive(ready["daemon"])
    assert run.names(ready["daemon"]) == ["TERM"]
    report = run.report()
    assert report["outcome"] == "exited"
    assert [(e["pid"], e["signal"]) for e in report["killed"]] == [(ready["daemon"], "TERM")]


def test_stubborn_leftovers_are_killed_after_term(graceshell, worker):
    run = graceshell(*NONE, "--linger", "0.2s", *worker("--daemon", "--ignore", "TERM", "--exit-after", "0.2",
                                                       "--exit-code", "4"))
    ready = run.ready()
    assert run.wait() == 4
    assert not alive(ready["daemon"])
    signals = [(e["pid"], e["signal"]) for e in run.report()["killed"]]
    assert signals == [(ready["daemon"], "TERM"), (ready["daemon"], "KILL")]


def test_orphaned_zombies_are_reaped(graceshell, worker):
    import psutil

    run = graceshell(*NONE, "--log-level", "debug", *worker("--orphans", "20", "--exit-on", "TERM"))
    run.ready()
    me = psutil.Process(run.pid)

    def no_zombies():
        kids = [kid for kid in me.children() if not is_guard(kid)]
        return len(kids) == 1 and kids[0].status() != psutil.STATUS_ZOMBIE

    wait_for(no_zombies, 5, "orphans reaped")
    run.kill(signal.SIGTERM)
    assert run.wait() == 0
    assert run.report()["reaped_orphans"] == 20
    assert len([e for e in run.events() if e["event"] == "graceshell.reap"]) == 21


def test_stop_before_the_worker_exists_is_not_lost(tmp_path, worker):
    """A stop that lands between signal set-up and spawn reaches the worker."""
    import json
    import subprocess

    code = f"""
import os, signal, sys
from graceshell.engine import tree
from graceshell.config.plan import make_plan
from graceshell.config.settings import Origin, Setting
from graceshell.engine.supervisor import Supervisor
spawn = tree.spawn_worker
def early(*args):
    os.kill(os.getpid(), signal.SIGTERM)  # the stop arrives now, before the worker exists
    return spawn(*args)
tree.spawn_worker = early
plan = make_plan({worker('--exit-on', 'TERM')[1:]!r}, {{"platform": Setting("none", Origin("test"))}})
sys.exit(Supervisor(plan, 'json').run())
"""
    proc = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True,
                          timeout=20)
    # The worker may get the TERM before it installed its own handler, and
    # die of it: what matters is that the stop reached it at all.
    assert proc.returncode in (0, 143), proc.stderr
    forwards = [json.loads(line) for line in proc.stderr.splitlines() if '"graceshell.forward"' in line]
    assert [(f["signal"], f["delivered"]) for f in forwards] == [("TERM", True)]
    assert json.loads(proc.stderr.splitlines()[-1])["stop_signal"] == "TERM"


# -- platforms and the report --------------------------------------------------------

@pytest.mark.parametrize("var, platform, timeout, budget", [
    ("DYNO", "heroku", 30.0, 25.0),
    ("RENDER", "render", 30.0, 25.0),
    ("FLY_APP_NAME", "fly", 5.0, 4.0),
    ("KUBERNETES_SERVICE_HOST", "kubernetes", 30.0, 25.0),
    ("ECS_CONTAINER_METADATA_URI_V4", "ecs", 30.0, 25.0),
    ("K_SERVICE", "cloudrun", 10.0, 8.0),
])
def test_platform_is_detected_from_the_environment(graceshell, var, platform, timeout, budget):
    run = graceshell("--", "true", env=clean_env(**{var: "x"}))
    assert run.wait() == 0
    start = run.event("graceshell.start")
    assert (start["platform"], start["platform_timeout_s"], start["budget_s"]) == (platform, timeout, budget)
    assert start["platform_source"] == f"env {var}"


def test_platform_flag_and_timeout_override_detection(graceshell):
    run = graceshell("--platform", "heroku", "--platform-timeout", "60s", "--", "true",
                     env=clean_env(FLY_APP_NAME="x"))
    assert run.wait() == 0
    start = run.event("graceshell.start")
    assert (start["platform"], start["platform_timeout_s"], start["budget_s"]) == ("heroku", 60.0, 55.0)


def test_report_has_every_documented_field(graceshell, worker):
    run = graceshell("--platform", "heroku", "--name", "worker", *worker("--exit-on", "TERM"))
    run.ready()
    run.kill(signal.SIGTERM)
    assert run.wait() == 0
    report = run.report()
    for key in ("process", "outcome", "exit_code", "signal", "stop_signal", "shutdown_s", "budget_s",
                "platform_timeout_s", "platform", "ladder", "killed", "level", "timestamp"):
        assert key in report, key
    assert report["process"] == "worker" and report["platform"] == "heroku"
    assert report["budget_s"] == 25.0 and report["platform_timeout_s"] == 30.0
    assert [e["event"] for e in run.events()][:3] == ["graceshell.start", "graceshell.signal", "graceshell.forward"]


def test_log_formats(graceshell):
    run = graceshell(*NONE, "--log-format", "logfmt", "--", "true")
    assert run.wait() == 0
    last = run.stderr().splitlines()[-1]
    assert last.startswith("event=graceshell.exit ") and " outcome=exited " in last
    run = graceshell(*NONE, "--log-format", "console", "--", "true")
    assert run.wait() == 0
    assert "graceshell.exit" in run.stderr() and "\033[" not in run.stderr()  # no colour off a TTY


def test_as_pid_1_it_reaps_zombies_and_takes_stop_signals(tmp_path, worker):
    """In a new PID namespace graceshell is PID 1, as in a container."""
    import json
    import shutil
    import subprocess

    import psutil

    unshare = ["unshare", "--pid", "--fork", "--mount-proc"]
    if shutil.which("unshare") is None or subprocess.run([*unshare, "true"], capture_output=True).returncode:
        pytest.skip("PID namespaces are not available here")
    err = tmp_path / "stderr"
    with open(err, "wb") as out:
        proc = subprocess.Popen([*unshare, sys.executable, "-m", "graceshell", "run", *NONE,
                                 *worker("--orphans", "5", "--exit-on", "TERM")],
                                stderr=out, env=clean_env(), start_new_session=True)
    try:
        wait_for((tmp_path / "ready.json").exists, 10, "worker ready")
        assert json.loads((tmp_path / "ready.json").read_text())["pid"] == 2  # graceshell is 1
        init = psutil.Process(proc.pid).children()[0]

        def zombies_reaped():
            kids = init.children()
            return len(kids) == 1 and kids[0].status() != psutil.STATUS_ZOMBIE

        wait_for(zombies_reaped, 5, "orphans reaped by PID 1")
        os.kill(init.pid, signal.SIGTERM)  # the kernel drops it unless PID 1 handles TERM
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    report = json.loads(err.read_text().splitlines()[-1])
    assert report["outcome"] == "clean" and report["reaped_orphans"] == 5


def test_clean_exit_makes_a_clean_stop_exit_0_and_keeps_the_workers_status(graceshell, tmp_path):
    """tini -e: a worker that dies of the TERM it was sent is a clean stop, which
    systemd would count a failure (143); a crash still exits with its own status."""
    (tmp_path / "graceshell.yml").write_text("defaults:\n  clean_exit: true\n")
    stopped = graceshell(*NONE, "--config", str(tmp_path / "graceshell.yml"), "--linger", "0s", "--", "sh", "-c",
                         "kill -TERM $PPID; exec sleep 5")
    assert stopped.wait() == 0
    report = stopped.report()
    assert (report["outcome"], report["exit_code"], report["worker_exit_code"]) == ("clean", 0, 143)
    crashed = graceshell(*NONE, "--clean-exit", "--", "sh", "-c", "exit 3")
    assert crashed.wait() == 3 and "worker_exit_code" not in crashed.report()
