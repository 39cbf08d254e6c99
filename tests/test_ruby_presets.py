"""The sidekiq and delayed_job presets: their Ruby files, their environment
and what `graceshell check` says about them (no Ruby needed)."""

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import GRACESHELL, check_json, clean_env
from graceshell.config.presets import preset_layer

def check(tmp: Path, procfile: str, *args: str, env: dict | None = None) -> dict:
    (tmp / "Procfile").write_text(procfile)
    return {entry["process"]: entry for entry in check_json(tmp, *args, env=env)["processes"]}


@pytest.mark.parametrize("preset", ["sidekiq", "delayed_job"])
def test_ruby_preset_loads_its_shipped_file_through_rubyopt(preset):
    rubyopt = preset_layer(preset)["env"].value["RUBYOPT"]
    flag, _, path = rubyopt.partition("-r")
    assert not flag and os.path.isabs(path) and path.endswith(f"ruby/{preset}.rb")
    assert os.path.isfile(path), "the Ruby integration must ship with the package"
    assert os.path.isfile(os.path.join(os.path.dirname(path), "graceshell.rb"))


def test_check_sidekiq_warns_only_about_a_timeout_of_the_users_that_does_not_fit(tmp_path):
    entries = check(tmp_path, "default: bundle exec sidekiq -c 5\n"
                              "fits: bundle exec sidekiq -t 5\n"
                              "long: bundle exec sidekiq -t 25\n"
                              "joined: sh -c 'exec sidekiq --timeout=25'\n",
                    "--preset", "sidekiq", "--platform", "docker")
    assert [s["signal"] for s in entries["default"]["ladder"]["value"]] == ["TERM", "TERM", "KILL"]
    assert entries["default"]["env"]["value"] == ["RUBYOPT"]
    for name in ("default", "fits"):
        assert not [w for w in entries[name]["warnings"] if "sidekiq's -t" in w], entries[name]["warnings"]
    for name in ("long", "joined"):
        (warning,) = [w for w in entries[name]["warnings"] if "sidekiq's -t" in w]
        assert "-t 25s does not fit a budget of 8s" in warning and "use -t 5 or less" in warning, warning
        assert "cold step at 5s" in warning


def test_check_delayed_job_says_how_to_run_several_workers(tmp_path):
    """delayed_job's script hands -n workers to the daemons gem: `start`
    daemonizes and returns, `run` runs them one after another."""
    entries = check(tmp_path, "daemons: bin/delayed_job -n 2 start\n"
                              "in_turn: bundle exec script/delayed_job --pool=mail:2 run\n"
                              "one: bin/delayed_job run\n"
                              "rake: bundle exec rake jobs:work\n",
                    "--preset", "delayed_job", "--platform", "docker")
    # (bin/delayed_job is not on PATH here either: that warning is check's own, and not counted)
    (warning,) = [w for w in entries["daemons"]["warnings"] if "one worker per process" in w]
    assert "daemonizes its workers" in warning, warning
    (warning,) = [w for w in entries["in_turn"]["warnings"] if "one worker per process" in w]
    assert "one after another" in warning, warning
    for name in ("one", "rake"):
        assert not [w for w in entries[name]["warnings"] if "one worker per process" in w], entries[name]["warnings"]


@pytest.mark.parametrize("preset", ["sidekiq", "delayed_job"])
def test_check_ruby_preset_says_when_a_rubyopt_of_the_users_hides_the_integration(tmp_path, preset):
    command = "bundle exec sidekiq" if preset == "sidekiq" else "bundle exec rake jobs:work"
    entries = check(tmp_path, f"worker: {command}\n", "--preset", preset, env=clean_env(RUBYOPT="-W0"))
    (warning,) = [w for w in entries["worker"]["warnings"] if "RUBYOPT" in w]
    assert "from the environment" in warning and shlex.split(warning)[-3].endswith(f"ruby/{preset}.rb")
    entries = check(tmp_path, f"worker: {command}\n", "--preset", preset)
    assert not [w for w in entries["worker"]["warnings"] if "RUBYOPT" in w]


@pytest.mark.parametrize("platform, budget", [(["--platform", "none", "--budget", "7.5s"], "7.5"),
                                              (["--platform", "heroku"], "25"),
                                              (["--platform", "heroku", "--ladder", "TERM@0s,KILL@20s"], "20")])
def test_worker_gets_the_budget_for_the_ruby_integrations(tmp_path, platform, budget):
    out = tmp_path / "budget"
    proc = subprocess.run([*GRACESHELL, "run", *platform, "--", "sh", "-c", f'echo "$GRACESHELL_BUDGET_S" > {out}'],
                          cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().strip() == budget


def test_start_passes_the_sidekiq_presets_environment_to_each_process(tmp_path):
    (tmp_path / "Procfile").write_text("worker: env\n")
    proc = subprocess.run([*GRACESHELL, "start", "--preset", "sidekiq", "--platform", "none"], cwd=tmp_path,
                          env=clean_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    (line,) = [line for line in proc.stdout.splitlines() if "RUBYOPT=" in line]
    assert line.endswith("/ruby/sidekiq.rb"), line


@pytest.mark.parametrize("kind", ["notice", "huge", "fifo", "symlink", "missing", "not json"])
def test_the_ruby_notice_reader_reads_only_a_small_regular_file(tmp_path, kind):
    """Like graceshell.shutdown: a reader inside a signal trap must never hang, follow a link or read a gigabyte."""
    import shutil

    if shutil.which("ruby") is None:
        if os.environ.get("CI"):
            pytest.fail("ruby missing: .ci/run installs it (tools/install-test-deps)")
        pytest.skip("ruby not installed (bash tools/install-test-deps)")
    notice = tmp_path / "shutdown.json"
    real = tmp_path / "real.json"
    real.write_text('{"step": 1}')
    if kind == "notice":
        notice.write_text('{"step": 1}')
    elif kind == "huge":
        notice.write_text(" " * (64 * 1024) + '{"step": 1}')
    elif kind == "fifo":
        os.mkfifo(notice)
    elif kind == "symlink":
        notice.symlink_to(real)
    elif kind == "not json":
        notice.write_bytes(b"\xff{")
    library = Path(preset_layer("sidekiq")["env"].value["RUBYOPT"][2:]).with_name("graceshell.rb")
    proc = subprocess.run(["ruby", f"-r{library}", "-e", "print Graceshell.escalated?"], capture_output=True,
                          text=True, timeout=10, env=clean_env(GRACESHELL_SHUTDOWN_FILE=str(notice)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ("true" if kind == "notice" else "false")
