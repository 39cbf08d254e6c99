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


def test_a_bare_stubborn_worker_needs_the_platforms_sigkill(tmp_path):
    code, result, err = drill(tmp_path, "--platform", "docker", "--platform-timeout", "1s", "--after", "0.5s",
                              "--no-wrap", "--", sys.executable, WORKER, str(tmp_path), "--child", "--ignore", "TERM")
    assert code == 1, err
    assert result["survived"] is False and result["broadcast"] == "pid1" and result["wrapped"] is False
    ready = json.loads((tmp_path / "ready.json").read_text())
    assert {p["pid"] for p in result["platform_killed"]} >= {ready["pid"], ready["child"]}
    assert not alive(ready["child"])


def test_a_job_that_does_not_fit_is_named_in_the_verdict(tmp_path):
    code, result, err = drill(tmp_path, "--platform", "heroku", "--platform-timeout", "2s", "--after", "0.5s",
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
