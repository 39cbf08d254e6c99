"""The command line (click) and the logs (structlog), from the outside."""

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from conftest import GRACESHELL, clean_env, run_cli, wait_for

def graceshell(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd, env=env)


# -- usage errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["rnu"], "No such command 'rnu'"),
    (["run", "--budget"], "'--budget' requires an argument"),
    (["check", "--log-format", "xml"], "'xml' is not one of"),
    (["drill", "--broadcast", "everyone", "--", "true"], "'everyone' is not one of"),
    (["start", "--port", "eighty"], "'eighty' is not a valid integer"),
    (["check", "--json", "a", "b"], "check takes one PROCESS_TYPE, got a b (a command goes after `--`)"),
    (["run", "--remap", "TERM", "--", "true"], "FROM:TO"),
])
def test_usage_errors_exit_2_in_one_line_naming_the_flag(tmp_path, args, needle):
    proc = graceshell(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("graceshell: error: "), proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert "--help'" in proc.stderr  # where to look next


def test_a_bad_environment_variable_is_a_usage_error(tmp_path):
    proc = graceshell("check", cwd=tmp_path, env=clean_env(GRACESHELL_LOG_LEVEL="loud"))
    assert proc.returncode == 2 and "'loud' is not one of" in proc.stderr and "Traceback" not in proc.stderr


def test_no_command_prints_the_help_and_exits_2():
    proc = graceshell()
    assert proc.returncode == 2
    assert "Commands:" in proc.stderr and "run" in proc.stderr and "Traceback" not in proc.stderr


def test_help_and_version():
    assert graceshell("--version").stdout.startswith("graceshell ")
    for command in ("run", "start", "check", "drill"):
        proc = graceshell(command, "--help")
        assert proc.returncode == 0 and "--budget" in proc.stdout and "--log-format" in proc.stdout
    assert "graceshell run -- celery -A app worker" in graceshell("run", "--help").stdout  # examples kept as written


# -- shell completion -----------------------------------------------------------------------------

@pytest.mark.parametrize("shell, marker", [("bash", "complete -o nosort -F"), ("zsh", "#compdef graceshell"),
                                           ("fish", "complete --no-files --command graceshell")])
def test_completion_scripts(shell, marker):
    proc = graceshell(env=clean_env(_GRACESHELL_COMPLETE=f"{shell}_source"))
    assert proc.returncode == 0 and marker in proc.stdout, proc.stdout


def _complete(words: str, cwd: Path) -> list[str]:
    env = clean_env(_GRACESHELL_COMPLETE="bash_complete", COMP_WORDS=words,
                    COMP_CWORD=str(len(words.split()) - (0 if words.endswith(" ") else 1)))
    proc = graceshell(cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr
    return [line.split(",", 1)[1] for line in proc.stdout.splitlines() if "," in line]


def test_completion_offers_presets_platforms_commands_and_process_types(tmp_path):
    (tmp_path / "Procfile").write_text("worker: celery -A app worker\nweb: gunicorn app\nwatcher: sleep 1\n")
    assert "celery" in _complete("graceshell run --preset ce", tmp_path)
    assert _complete("graceshell check --platform he", tmp_path) == ["heroku"]
    assert set(_complete("graceshell ", tmp_path)) >= {"run", "start", "check", "drill"}
    assert _complete("graceshell check w", tmp_path) == ["worker", "web", "watcher"]
    assert _complete("graceshell run wo", tmp_path) == ["worker"]
    assert _complete("graceshell start web ", tmp_path) == ["worker", "web", "watcher"]


# -- the three renderers --------------------------------------------------------------------------

def _run_true(fmt: str) -> str:
    proc = graceshell("run", "--platform", "none", "--log-format", fmt, "--", "true")
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_json_lines_have_the_documented_keys():
    events = [json.loads(line) for line in _run_true("json").splitlines()]
    assert [e["event"] for e in events] == ["graceshell.start", "graceshell.reap", "graceshell.exit"]
    for event in events:
        assert list(event)[:2] == ["event", "process"] and list(event)[-2:] == ["level", "timestamp"]
        assert event["process"] == "true" and event["level"] == "info"
        stamp = datetime.strptime(event["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
        assert abs((stamp - datetime.now(timezone.utc).replace(tzinfo=None)).total_seconds()) < 600  # UTC
    assert events[-1]["outcome"] == "exited" and events[-1]["killed"] == []


def _logfmt(line: str) -> dict[str, str]:
    import shlex

    return dict(pair.partition("=")[::2] for pair in shlex.split(line))


def test_logfmt_lines_parse_with_nested_values_as_json():
    lines = [_logfmt(line) for line in _run_true("logfmt").splitlines()]
    assert [line["event"] for line in lines] == ["graceshell.start", "graceshell.reap", "graceshell.exit"]
    start = lines[0]
    assert json.loads(start["command"]) == ["true"] and start["level"] == "info" and start["timestamp"].endswith("Z")
    assert start["subreaper"] in ("true", "false")


def test_console_is_plain_off_a_terminal_and_coloured_on_one():
    plain = _run_true("console")
    assert "graceshell.exit" in plain and "\033[" not in plain
    # auto on a terminal: console with colour
    leader, follower = pty.openpty()
    proc = subprocess.Popen([*GRACESHELL, "run", "--platform", "none", "--", "true"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=follower, env=clean_env())
    os.close(follower)
    out = b""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(10)
    os.close(leader)
    text = out.decode()
    assert "graceshell.exit" in text and "\033[" in text and not text.lstrip().startswith("{")


# -- start-up ---------------------------------------------------------------------------------------

def test_a_stop_during_start_up_is_acted_on_once_the_loop_runs(tmp_path):
    """The worker signals graceshell the moment it starts, while graceshell is
    still importing its logging library: the stop waits in the wakeup pipe and
    the worker gets its TERM."""
    stamp, got = tmp_path / "sent", tmp_path / "got"
    script = (f"trap 'echo TERM > {got}; exit 0' TERM; kill -TERM $PPID; date +%s.%N > {stamp}; "
              "sleep 10 & wait")
    proc = graceshell("run", "--platform", "none", "--log-format", "json", "--", "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    assert got.read_text().strip() == "TERM"
    events = [json.loads(line) for line in proc.stderr.splitlines()]
    names = [e["event"] for e in events]
    assert names.index("graceshell.start") < names.index("graceshell.signal") < names.index("graceshell.exit")
    start = datetime.strptime(events[0]["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
    started_logging = (start - datetime(1970, 1, 1)).total_seconds()
    assert float(stamp.read_text()) < started_logging  # the signal came before graceshell could log
    report = events[-1]
    assert report["stop_signal"] == "TERM" and report["outcome"] == "clean"


def test_the_run_path_imports_click_and_structlog_after_the_spawn():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "graceshell", "run", "--platform", "none",
                           "--", "true"], capture_output=True, text=True, env=clean_env(), timeout=30)
    imported = [line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "click" in imported and "structlog" in imported
    assert imported.index("click") < imported.index("graceshell.engine.tree") < imported.index("structlog")
    assert "asyncio" not in imported  # structlog's async methods are never used: deferred, never loaded


def test_a_deferred_module_is_the_real_one_at_first_use():
    code = """
import sys
from graceshell.deferred import defer
defer("colorsys", "email", "json")  # json is imported already: left alone
import colorsys
assert type(colorsys).__name__ == "_Deferred" and "rgb_to_hsv" not in vars(colorsys)  # not loaded yet
from colorsys import rgb_to_hsv
assert rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0) and colorsys.hls_to_rgb(0, 0, 0) == (0, 0, 0)
assert type(sys.modules["colorsys"]).__name__ == "module"
import email.mime.text  # a submodule of a deferred package
assert email.mime.text.MIMEText("x")["Content-Type"].startswith("text/plain")
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.stdout == "ok\n", proc.stderr


def _first_child(pid: int) -> int:
    children = wait_for(lambda: Path(f"/proc/{pid}/task/{pid}/children").read_text().split(), 10, "PID 1")
    return int(children[0])


def _pid_namespaces() -> bool:
    return os.geteuid() == 0 and shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _pid_namespaces(), reason="PID namespaces are not available here (unshare needs root)")
def test_a_stop_to_pid_1_once_python_has_started_is_acted_on():
    """As PID 1 a signal without a handler is discarded by the kernel. The bound
    that is left is Python's own start-up: the TERM goes out the moment the
    first of graceshell's own modules has loaded (importtime prints a line as
    each import ends), while the command line is still to be imported."""
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-X", "importtime", "-m",
                             "graceshell", "run", "--platform", "none", "--log-format", "json", "--", "sleep", "30"],
                            stderr=subprocess.PIPE, text=True, env=clean_env())
    pid1 = _first_child(proc.pid)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("import time:") and line.rsplit("|", 1)[-1].strip().startswith("graceshell."):
            os.kill(pid1, signal.SIGTERM)
            break
    try:
        rest = proc.communicate(timeout=10)[1]
    except subprocess.TimeoutExpired:
        os.kill(pid1, signal.SIGKILL)
        proc.wait()
        pytest.fail("the TERM to PID 1 was lost")
    report = json.loads([line for line in rest.splitlines() if line.startswith("{")][-1])
    assert report["event"] == "graceshell.exit" and report["stop_signal"] == "TERM", rest
    assert report["outcome"] == "clean" and proc.returncode == 128 + signal.SIGTERM


def test_a_stop_recorded_at_start_up_acts_as_it_would_have_for_other_commands():
    """graceshell.early catches the stop signals on import; a command that does
    not take them over gets them back, and a TERM then ends it as a TERM."""
    code = ("import os, signal, graceshell.early as early; os.kill(os.getpid(), signal.SIGTERM); "
            "print('recorded', flush=True); early.release(); print('not reached')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.stdout == "recorded\n" and proc.returncode == -signal.SIGTERM


def test_check_ends_at_a_stop_that_came_during_its_start_up(tmp_path):
    proc = subprocess.Popen([*GRACESHELL, "check", "--platform", "none", "--", "sleep", "1"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
    while not _catches(proc.pid, signal.SIGTERM):  # graceshell.early's handler: the command line is loading
        time.sleep(0.001)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM and out == b""


def _catches(pid: int, signum: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    return False


def test_help_says_what_the_commands_do(tmp_path):
    run_help = " ".join(graceshell("run", "--help").stdout.split())
    assert "(default: $GRACESHELL_PROCESS, else $DYNO, else the command's name)" in run_help
    drill_help = " ".join(graceshell("drill", "--help").stdout.split())
    assert "0 when the worker stopped on its own within the budget" in drill_help
    start_help = " ".join(graceshell("start", "--help").stdout.split())
    assert "-c is honcho's and foreman's concurrency here; in run, check and drill it is --config" in start_help


def test_procfile_and_env_have_honchos_short_options(tmp_path):
    (tmp_path / "Procfile.dev").write_text("worker: sleep 1\n")
    (tmp_path / "dev.env").write_text("QUEUE=high\n")
    proc = graceshell("check", "--json", "--platform", "none", "-f", "Procfile.dev", "-e", "dev.env", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (entry,) = json.loads(proc.stdout)["processes"]
    assert entry["process"] == "worker" and entry["env"]["value"] == ["QUEUE"]
