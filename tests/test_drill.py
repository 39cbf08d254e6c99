"""`graceshell drill` plays the platform and gives a verdict."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import alive, clean_env

ROOT = Path(__file__).resolve().parent.parent
WORKER = str(Path(__file__).with_name("worker.py"))


def drill(tmp: Path, *args: str, timeout: float = 60) -> tuple[int, dict, str]:
    proc = subprocess.run([sys.executable, "-m", "graceshell", "drill", "--json", *args], cwd=tmp, env=clean_env(),
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.startswith("{") else {}, proc.stderr


def ready(tmp: Path) -> list[str]:
    """Stop once tests/worker.py has its handlers: a stop at a fixed time can
    come first on a loaded machine, and a worker meant to ignore TERM dies of it."""
    return ["--when-ready", str(tmp / "ready.json")]


def test_a_bare_stubborn_worker_needs_the_platforms_sigkill(tmp_path):
    code, result, err = drill(tmp_path, "--platform", "docker", "--platform-timeout", "1s", *ready(tmp_path),
                              "--no-wrap", "--", sys.executable, WORKER, str(tmp_path), "--child", "--ignore", "TERM")
    assert code == 1, err
    assert result["survived"] is False and result["broadcast"] == "pid1" and result["wrapped"] is False
    started = json.loads((tmp_path / "ready.json").read_text())
    assert {p["pid"] for p in result["platform_killed"]} >= {started["pid"], started["child"]}
    assert not alive(started["child"])


def test_a_job_that_does_not_fit_is_named_in_the_verdict(tmp_path):
    code, result, err = drill(tmp_path, "--platform", "heroku", "--platform-timeout", "2s", *ready(tmp_path),
                              "--", sys.executable, WORKER, str(tmp_path), "--job", "j-7:reports.build",
                              "--ignore", "TERM")
    assert code == 1, err
    assert result["broadcast"] == "all" and result["platform_killed"] == []  # graceshell was first
    assert [job["id"] for job in result["orphaned_jobs"]] == ["j-7"]
    assert "did not fit" in result["verdict"]


def test_the_demo_worker_survives_a_heroku_stop(tmp_path):
    code, result, err = drill(tmp_path, "--platform", "heroku", "--platform-timeout", "6s", "--after", "1s",
                              "--linger", "0.5s", "--", sys.executable, str(ROOT / "examples" / "demo_worker.py"))
    assert code == 0, err
    assert result["survived"] is True and result["outcome"] == "clean"
    assert result["stopped_after_s"] < 6


def test_a_worker_that_needs_graceshells_sigkill_did_not_survive(tmp_path):
    # It ignores TERM: only the KILL at the budget ends it, and whatever it
    # was doing outside the ledger died with it.
    code, result, err = drill(tmp_path, "--platform", "docker", "--platform-timeout", "3s", *ready(tmp_path),
                              "--", sys.executable, WORKER, str(tmp_path), "--child", "--ignore", "TERM")
    assert code == 1, err
    assert result["survived"] is False and result["platform_killed"] == [] and result["outcome"] == "killed"
    assert result["verdict"].startswith("did not stop on its own: graceshell SIGKILLed 2 process(es) at its budget")
    kinds = [(e["kind"], e["fired"]) for e in result["timeline"]]
    assert ("kill", True) in kinds and ("deadline", False) in kinds


def test_text_timeline_of_a_stop(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "graceshell", "drill", "--platform", "heroku", "--platform-timeout",
                           "4s", *ready(tmp_path), "--preset", "celery", "--", sys.executable, WORKER,
                           str(tmp_path), "--job", "j-9:reports.build", "--ignore", "TERM", "--exit-on", "QUIT"],
                          cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("graceshell drill: DID NOT SURVIVE: stopped in ")
    start = lines.index("  timeline, from the stop to the platform's SIGKILL at 4s:")
    bars = lines[start + 1:-1]
    # Budget 3.2s, cold reserve half of it: QUIT at 1.6s; every bar is plain ASCII, 42 columns wide.
    assert bars[0] == "  0.00s  |*.......................................|  stop: TERM to every process (platform heroku)"
    assert any(line.endswith("QUIT to the worker: step 2, cold shutdown") for line in bars)
    assert any("job j-9 reports.build cut off: left in the ledger, not requeued" in line for line in bars)
    assert bars[-1] == "  4.00s  |.......................................o|  platform's SIGKILL at 4s: not needed"
    assert all(line.split("|")[1].count("*") + line.split("|")[1].count("o") == 1 and len(line.split("|")[1]) == 40
               for line in bars)
    assert lines[-1].startswith("  used ") and lines[-1].endswith(" of the 4s grace period (" + lines[-1].split("(")[-1])


def test_the_timeline_on_a_terminal_is_drawn_with_blocks():
    from graceshell.commands.drill import render

    result = {"survived": True, "verdict": "stopped cleanly in 1.0s of 10s", "platform": "docker",
              "stop_signal": "TERM", "broadcast": "pid1", "platform_timeout_s": 10.0, "wrapped": True,
              "exit_code": 0, "platform_killed": [], "orphaned_jobs": [], "stopped_after_s": 1.0,
              "timeline": [{"t": 0.0, "what": "stop", "kind": "stop", "fired": True},
                           {"t": 5.0, "what": "the worker exited (exit 0)", "kind": "exit", "fired": True},
                           {"t": 10.0, "what": "platform's SIGKILL", "kind": "deadline", "fired": False}]}
    shown = render(result, tty=True)
    assert "\u2502\u2588" in shown and "\u25cb\u2502" in shown and "\x1b[36mthe worker exited (exit 0)\x1b[0m" in shown
    plain = render(result, tty=False)
    assert "\x1b" not in plain and "  5.00s  |" + "=" * 20 + "*" + "." * 19 + "|  the worker exited (exit 0)" in plain
    assert plain.endswith("  used 1.0s of the 10s grace period (10%)\n")


def test_the_timeline_honours_no_color(monkeypatch):
    from graceshell.commands.drill import render

    result = {"survived": True, "verdict": "stopped", "platform": "docker", "stop_signal": "TERM",
              "broadcast": "pid1", "platform_timeout_s": 10.0, "wrapped": True, "exit_code": 0,
              "platform_killed": [], "orphaned_jobs": [], "stopped_after_s": 1.0,
              "timeline": [{"t": 1.0, "what": "the worker exited (exit 0)", "kind": "exit", "fired": True}]}
    monkeypatch.setenv("NO_COLOR", "1")
    shown = render(result, tty=True)
    assert "\x1b" not in shown and "\u2588" in shown  # the blocks stay: they are no colour


def test_text_verdict(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "graceshell", "drill", "--platform", "kubernetes", "--after", "0.3s",
                           "--", "sleep", "30"], cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.startswith("graceshell drill: SURVIVED: stopped cleanly in ")
    assert "platform kubernetes: TERM to pid1, SIGKILL after 30s; under graceshell" in proc.stdout


def test_after_and_when_ready_together_is_a_usage_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "graceshell", "drill", "--after", "1s", "--when-ready", "x",
                           "--", "true"], cwd=tmp_path, env=clean_env(), capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr == "graceshell: error: --after and --when-ready: give one of them\n"


def test_an_event_that_lands_inside_a_worker_line_is_still_read(tmp_path):
    """The worker shares graceshell's stderr; an unbuffered print writes its text
    and its newline apart, and graceshell's event can land between them."""
    import io
    import json as json_module

    from graceshell.commands.drill import Drill
    from graceshell.config.plan import make_plan
    from graceshell.config.settings import Origin, Setting

    plan = make_plan(["true"], {"platform": Setting("heroku", Origin("test"))})
    drill = Drill(plan, broadcast=None, wrap=True, after=None, when_ready=None, config=None, out=io.StringIO())
    event = json_module.dumps({"event": "graceshell.escalate", "step": 1, "signal": "QUIT"})
    drill._echo_stderr(io.BytesIO(f"[worker 7] got TERM{event}\n\n".encode()))
    assert [item for _, item in drill.events] == [json_module.loads(event)]


def test_a_second_signal_at_0s_is_part_of_the_warm_shutdown_not_the_cold_one(tmp_path):
    """A ladder like Sidekiq's old TSTP-then-TERM sends both at 0s: neither is the cold shutdown."""
    code, result, err = drill(tmp_path, "--platform", "docker", "--platform-timeout", "5s", *ready(tmp_path),
                              "--ladder", "TSTP@0s,TERM@0s", "--", sys.executable, WORKER, str(tmp_path),
                              "--ignore", "TSTP", "--exit-on", "TERM")
    assert code == 0, err
    steps = [e["what"] for e in result["timeline"] if e["kind"] == "step" and e["fired"]]
    assert "TERM to the worker: step 2" in steps and not [s for s in steps if "cold" in s], steps
