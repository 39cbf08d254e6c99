"""graceshell.yml, presets, Procfile, .env and `graceshell check`."""

import json
import subprocess
import sys
from collections import OrderedDict, namedtuple
from pathlib import Path

import pytest

from conftest import GRACESHELL, check_json, clean_env, run_cli
from graceshell.config.procfile import command_argv, parse_dotenv, parse_procfile
from graceshell.durations import parse_duration

WORKER = str(Path(__file__).with_name("worker.py"))


def graceshell(tmp: Path, *args: str, env: dict | None = None, timeout: float = 20) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=tmp, env=env, timeout=timeout)


def write(tmp: Path, name: str, text: str) -> None:
    (tmp / name).write_text(text)


# -- the bad-input matrix ----------------------------------------------------------------
# (graceshell.yml, Procfile, .env, extra args, what the one line must say)

MARKER_CMD = "touch started"
BAD = [
    ("platfrom: heroku\n", None, None, [], "graceshell.yml:1: platfrom: unknown key (did you mean platform?)"),
    ("processes:\n  worker:\n    ladderr: []\n", None, None, [],
     "graceshell.yml:3: processes.worker.ladderr: unknown key (did you mean ladder?)"),
    ("budget: [1]\n", None, None, [], "graceshell.yml:1: budget: expected a duration"),
    ("budget: 25 seconds\n", None, None, [], "graceshell.yml:1: budget: invalid duration"),
    ("budget: -5\n", None, None, [], "graceshell.yml:1: budget: duration -5 is negative"),
    ("processes:\n  worker:\n    ladder:\n      - {at: 0s, signal: TERM}\n      - {at: 5s, signal: SIGNOPE}\n",
     None, None, [], "graceshell.yml:5: processes.worker.ladder[1].signal: unknown signal 'SIGNOPE'"),
    ("budget: 20s\nprocesses:\n  worker:\n    ladder:\n      - {at: 10s, signal: QUIT}\n"
     "      - {at: 5s, signal: INT}\n", None, None, [],
     "graceshell.yml:6: processes.worker.ladder[1]: INT@5s comes before the previous step"),
    ("budget: 10s\ndefaults:\n  ladder:\n    - {at: 0s, signal: TERM}\n    - {at: 20s, signal: KILL}\n",
     None, None, [], "graceshell.yml:5: defaults.ladder[1]: KILL@20s is after the budget (10s)"),
    ("defaults:\n  ladder: 'KILL@5s,QUIT@6s'\n", None, None, [], "defaults.ladder step 1: KILL@5s must be the last"),
    ("platform: heroku\nbudget: 30s\n", None, None, [],
     "graceshell.yml:2: budget: budget 30s must be shorter than the platform timeout 30s (heroku)"),
    ("defaults:\n  on_orphans: 5\n", None, None, [], "graceshell.yml:2: defaults.on_orphans: expected a non-empty"),
    ("defaults:\n  on_orphans: [bin/requeue]\n", None, None, [], "defaults.on_orphans: expected a non-empty string"),
    ("defaults:\n  second_signal: panic\n", None, None, [], "defaults.second_signal: 'panic' is not one of"),
    ("defaults:\n  preset: celry\n", None, None, [], "defaults.preset: unknown preset 'celry' (known: generic, celery"),
    ("platform: herokuu\n", None, None, [], "graceshell.yml:1: platform: 'herokuu' is not one of"),
    ("log_format: yaml\n", None, None, [], "graceshell.yml:1: log_format: 'yaml' is not one of"),
    ("defaults:\n  remap: {TERM: NOPE}\n", None, None, [], "defaults.remap.TERM: unknown signal 'NOPE'"),
    ("defaults:\n  remap: 'TERM:QUIT'\n", None, None, [], "defaults.remap: expected a mapping"),
    ("budget: 5s\nbudget: 6s\n", None, None, [], "graceshell.yml:2: budget: duplicate key"),
    ("budget: [1, 2\n", None, None, [], "graceshell.yml:2: invalid YAML"),
    ("- budget\n", None, None, [], "graceshell.yml:1: (top level): expected a mapping"),
    ("processes: [worker]\n", None, None, [], "graceshell.yml:1: processes: expected a mapping"),
    ("defaults:\n  ladder:\n    - {at: 0s}\n", None, None, [], "graceshell.yml:3: defaults.ladder[0]: missing 'signal'"),
    ("defaults:\n  ladder:\n    - {at: 0s, sig: TERM}\n", None, None, [], "defaults.ladder[0].sig: unknown key"),
    ("defaults:\n  ladder: 5\n", None, None, [], "defaults.ladder: expected a list"),
    ("defaults:\n  ladder: QUIT\n", None, None, [], "defaults.ladder: step 'QUIT' is not SIGNAL@OFFSET"),
    ("defaults:\n  ladder:\n    - {at: soon, signal: QUIT}\n", None, None, [],
     "graceshell.yml:3: defaults.ladder[0].at: invalid duration 'soon'"),
    ("defaults:\n  ladder:\n    - {at: budget+5s, signal: QUIT}\n", None, None, [], "write budget-DURATION"),
    ("defaults:\n  linger: true\n", None, None, [], "defaults.linger: expected a duration such as 25s or 500ms, got true"),
    ("defaults:\n  stop_signals: [TERM, KILL]\n", None, None, [], "defaults.stop_signals: KILL and STOP cannot be caught"),
    ("defaults:\n  env: {1BAD: x}\n", None, None, [], "defaults.env.1BAD: '1BAD' is not a valid environment variable"),
    ("processes:\n  bad name: {}\n", None, None, [], "processes.bad name: a process type is letters"),
    ("platform: heroku\nplatform_timeout: 0s\nbudget: 5s\n", None, None, [], "platform timeout is 0s"),
    (None, "worker celery\n", None, ["run", "worker"], "Procfile:1: expected NAME: COMMAND"),
    (None, "# jobs\nworker: a\nworker: b\n", None, ["run", "worker"],
     "Procfile:3: process type 'worker' is already defined on line 2"),
    (None, "web!: a\n", None, ["run", "web"], "Procfile:1: process type 'web!' may use only letters"),
    (None, "worker: " + MARKER_CMD + "\n", None, ["run", "nosuch"], "no process type 'nosuch' (types: worker)"),
    (None, "worker: graceshell run worker\n", None, ["run", "worker"], "is `graceshell run worker` itself"),
    (None, None, None, ["run", "worker"], "Procfile: not found, so 'worker' is no process type"),
    (None, "worker: graceshell run --bogus -- x\n", None, ["run", "worker"], "Procfile:1: No such option '--bogus'"),
    (None, "worker: graceshell run web\n", None, ["run", "worker"], "Procfile:1: `graceshell run web` inside the"),
    (None, "worker: graceshell run --config x.yml -- a\n", None, ["run", "worker"],
     "Procfile:1: --config inside a Procfile line is not supported"),
    (None, "worker: graceshell run --budget 40s -- a\n", None, ["run", "--platform", "heroku", "worker"],
     "Procfile:1 --budget: budget 40s must be shorter than the platform timeout 30s"),
    (None, None, "export A B\n", [], ".env:1: expected NAME=value"),
    (None, None, "A='unterminated\n", [], ".env:1: unterminated ' quote"),
    (None, None, None, ["-c", "missing.yml"], "missing.yml: config file not found"),
    (None, None, None, ["--preset", "celry"], "'--preset': unknown preset 'celry'"),
    (None, None, None, ["--ladder", "QUIT@budget+1s"], "'--ladder': offset 'budget+1s'"),
    (None, "worker: graceshell run --help -- x\n", None, ["run", "worker"], "Procfile:1: --help inside a Procfile line"),
    (None, None, None, ["--stop-signals", "TERM,SEGV"], "SEGV report a fault"),
    (None, None, None, ["--log-level", "loud"], "'--log-level': 'loud' is not one of"),
]


@pytest.mark.parametrize("config, procfile, dotenv, args, message", BAD,
                         ids=[f"{i}-{case[4][:40]}" for i, case in enumerate(BAD)])
def test_bad_input_is_one_line_exit_2_and_starts_nothing(tmp_path, config, procfile, dotenv, args, message):
    if config is not None:
        write(tmp_path, "graceshell.yml", config)
    if procfile is not None:
        write(tmp_path, "Procfile", procfile)
    if dotenv is not None:
        write(tmp_path, ".env", dotenv)
    if args[:1] == ["run"]:
        run_args, check_args = args, args[1:]
    else:
        platform = [] if "platform:" in (config or "") else ["--platform", "none"]
        # --name worker: the processes.worker section applies to this run
        run_args = ["run", *args, *platform, "--name", "worker", "--", "sh", "-c", MARKER_CMD]
        check_args = [*args, *platform]
    proc = graceshell(tmp_path, *run_args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("graceshell: error: "), proc.stderr
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "started").exists()
    check = graceshell(tmp_path, "check", *check_args)  # check reports the same problem the same way
    assert check.returncode == 2 and message in check.stderr and check.stderr.count("\n") == 1, check.stderr


def test_matrix_is_large_enough():
    assert len(BAD) >= 30


# -- precedence and presets ------------------------------------------------------------------

def test_precedence_flags_section_defaults_preset_platform(tmp_path):
    write(tmp_path, "Procfile", "worker: celery -A app worker\nweb: gunicorn app\n")
    write(tmp_path, "graceshell.yml", "platform: heroku\nbudget: 24s\ndefaults:\n  linger: 1s\n  preset: rq\n"
                                      "processes:\n  worker:\n    preset: celery\n    linger: 3s\n")
    out = check_json(tmp_path)
    worker, web = out["processes"]
    assert worker["preset"] == {"value": "celery", "from": "graceshell.yml:8: processes.worker.preset"}
    assert worker["linger_s"] == {"value": 3.0, "from": "graceshell.yml:9: processes.worker.linger"}
    assert worker["budget_s"] == {"value": 24.0, "from": "graceshell.yml:2: budget"}
    assert worker["ladder"]["value"] == [{"at": 0.0, "signal": "TERM"}, {"at": 19.0, "signal": "QUIT"},
                                         {"at": 24.0, "signal": "KILL"}]
    assert worker["ladder"]["from"] == "preset celery"
    assert web["preset"]["value"] == "rq" and web["linger_s"]["value"] == 1.0
    flagged = check_json(tmp_path, "worker", "--linger", "4s", "--preset", "generic", "--budget", "20s")
    entry = flagged["processes"][0]
    assert entry["linger_s"] == {"value": 4.0, "from": "--linger"}
    assert entry["preset"]["value"] == "generic" and entry["budget_s"]["value"] == 20.0
    assert entry["ladder"]["value"] == [{"at": 0.0, "signal": "(as received)"}, {"at": 20.0, "signal": "KILL"}]


@pytest.mark.parametrize("preset, ladder", [
    ("generic", [("(as received)", 0.0), ("KILL", 25.0)]),
    ("celery", [("TERM", 0.0), ("QUIT", 20.0), ("KILL", 25.0)]),
    ("rq", [("TERM", 0.0), ("TERM", 20.0), ("KILL", 25.0)]),
    ("sidekiq", [("TERM", 0.0), ("TERM", 22.0), ("KILL", 25.0)]),
    ("dramatiq", [("TERM", 0.0), ("TERM", 20.0), ("KILL", 25.0)]),
    ("huey", [("INT", 0.0), ("TERM", 20.0), ("KILL", 25.0)]),
    ("arq", [("TERM", 0.0), ("TERM", 20.0), ("KILL", 25.0)]),
    ("resque", [("QUIT", 0.0), ("TERM", 19.0), ("KILL", 25.0)]),
    ("delayed_job", [("INT", 0.0), ("TERM", 22.0), ("KILL", 25.0)]),
    ("gunicorn", [("TERM", 0.0), ("INT", 22.0), ("KILL", 25.0)]),
    ("uvicorn", [("TERM", 0.0), ("INT", 22.0), ("KILL", 25.0)]),
])
def test_presets_on_heroku(tmp_path, preset, ladder):
    out = check_json(tmp_path, "--preset", preset, "--platform", "heroku")
    entry = out["processes"][0]
    assert [(s["signal"], s["at"]) for s in entry["ladder"]["value"]] == ladder
    if preset == "resque":
        assert entry["env"]["value"] == ["TERM_CHILD"]
    if preset in ("sidekiq", "delayed_job"):
        assert entry["env"]["value"] == ["RUBYOPT"]


@pytest.mark.parametrize("preset, bare, integrated", [
    ("dramatiq", "dramatiq app", "dramatiq app graceshell.integrations.dramatiq --processes 2"),
    ("huey", "huey_consumer app.huey -w 4", "python -m graceshell.integrations.huey app.huey -w 4"),
    ("arq", "arq app.WorkerSettings", "sh -c 'exec python -m graceshell.integrations.arq $SETTINGS'"),
], ids=["dramatiq", "huey", "arq"])
def test_check_says_whether_the_command_runs_graceshells_integration(tmp_path, preset, bare, integrated):
    """On a broadcasting platform `check` names the integration the command lacks, or says it has it."""
    write(tmp_path, "Procfile", f"bare: {bare}\nintegrated: {integrated}\n")
    out = check_json(tmp_path, "--preset", preset, "--platform", "heroku")
    warnings = {entry["process"]: " ".join(entry["warnings"]) for entry in out["processes"]}
    assert f"graceshell.integrations.{preset}" in warnings["bare"] and "the command runs" not in warnings["bare"]
    assert f"the command runs graceshell.integrations.{preset}" in warnings["integrated"]


# (platform, timeout flag, preset): the cold step scales with the budget and
# leaves a warm phase of at least half of it on the platforms with short grace.
@pytest.mark.parametrize("platform, preset, ladder", [
    ("fly", "celery", [("TERM", 0.0), ("QUIT", 2.0), ("KILL", 4.0)]),
    ("fly", "rq", [("TERM", 0.0), ("TERM", 2.0), ("KILL", 4.0)]),
    ("docker", "celery", [("TERM", 0.0), ("QUIT", 5.0), ("KILL", 8.0)]),
    ("docker", "rq", [("TERM", 0.0), ("TERM", 6.0), ("KILL", 8.0)]),
    ("cloudrun", "celery", [("TERM", 0.0), ("QUIT", 5.0), ("KILL", 8.0)]),
    ("cloudrun", "rq", [("TERM", 0.0), ("TERM", 6.0), ("KILL", 8.0)]),
])
def test_short_grace_keeps_a_warm_phase(tmp_path, platform, preset, ladder):
    entry = check_json(tmp_path, "--preset", preset, "--platform", platform)["processes"][0]
    assert [(s["signal"], s["at"]) for s in entry["ladder"]["value"]] == ladder
    assert entry["warm_phase_s"]["value"] >= entry["budget_s"]["value"] / 2
    assert entry["cold_reserve_s"]["from"].startswith("25% of the budget, at least ")
    assert f"(preset {preset}: " in entry["cold_reserve_s"]["from"] and entry["errors"] == []


def test_an_8s_compose_stop_grace_period_fits_a_3s_job(tmp_path):
    entry = check_json(tmp_path, "--preset", "celery", "--platform", "docker",
                       "--platform-timeout", "8s")["processes"][0]
    assert [(s["signal"], s["at"]) for s in entry["ladder"]["value"]] == [("TERM", 0.0), ("QUIT", 3.4),
                                                                          ("KILL", 6.4)]


def test_a_cold_step_pushed_onto_zero_is_an_error_naming_the_platforms_setting(tmp_path):
    proc = graceshell(tmp_path, "check", "--platform", "fly", "--preset", "resque")
    assert proc.returncode == 2 and proc.stderr == "graceshell: check: 1 error\n"
    assert "  warm phase       0s" in proc.stdout
    assert ("error: TERM@budget-6s falls on 0s: a budget of 4s (fly, timeout 5s) leaves no warm phase"
            in proc.stdout)
    assert "raise kill_timeout in fly.toml to at least 15s" in proc.stdout
    railway = check_json(tmp_path, "--platform", "railway", "--preset", "celery", status=2)["processes"][0]
    (error,) = railway["errors"]
    assert error.endswith("raise the service variable RAILWAY_DEPLOYMENT_DRAINING_SECONDS to at least 8s")
    fixed = graceshell(tmp_path, "check", "--platform", "cloudrun", "--budget", "1s", "--preset", "resque")
    assert "error: TERM@budget-6s falls on 0s" in fixed.stdout and "raise the budget (--budget)" in fixed.stdout
    heroku = graceshell(tmp_path, "check", "--platform", "heroku", "--platform-timeout", "5s", "--preset", "resque")
    assert "heroku's timeout cannot be raised: give this worker a ladder of its own" in heroku.stdout


def test_a_budget_relative_first_step_that_fits_is_no_error(tmp_path):
    entry = check_json(tmp_path, "--platform", "docker", "--ladder", "QUIT@budget-5s")["processes"][0]
    assert entry["errors"] == [] and entry["warm_phase_s"]["value"] == 3.0
    fly = check_json(tmp_path, "--platform", "fly", "--ladder", "QUIT@budget-5s", status=2)["processes"][0]
    assert fly["errors"][0].startswith("QUIT@budget-5s falls on 0s")
    spaced = check_json(tmp_path, "--platform", "fly", "--ladder", "QUIT@budget - 5s", status=2)["processes"][0]
    assert spaced["errors"][0].startswith("QUIT@budget - 5s falls on 0s")  # spelled as the ladder parser allows
    assert spaced["errors"][0].endswith(fly["errors"][0].rsplit(";", 1)[1])  # the same advice


def test_a_short_budget_halves_between_warm_phase_and_cold_step_and_says_so(tmp_path):
    entry = check_json(tmp_path, "--platform", "fly", "--preset", "celery")["processes"][0]
    assert entry["warm_phase_s"]["value"] == entry["cold_reserve_s"]["value"] == 2.0 and entry["errors"] == []
    assert entry["warnings"][0] == (
        "the cold step gets 2s before the final KILL, less than the 3s the celery preset's cold shutdown needs: "
        "it may be cut short by the KILL (jobs are still reported); raise kill_timeout in fly.toml to at least 8s")


def test_budget_reserve_in_graceshell_yml(tmp_path):
    write(tmp_path, "graceshell.yml", "platform: docker\ndefaults:\n  ladder: 'INT@0s,TERM@budget-reserve'\n")
    entry = check_json(tmp_path)["processes"][0]
    # No preset floor: the built-in 2s, or a quarter of the budget when that is more.
    assert [(s["signal"], s["at"]) for s in entry["ladder"]["value"]] == [("INT", 0.0), ("TERM", 6.0), ("KILL", 8.0)]
    assert entry["cold_reserve_s"]["value"] == 2.0 and "(built-in)" in entry["cold_reserve_s"]["from"]


def test_config_from_environment_variable(tmp_path):
    write(tmp_path, "other.yml", "budget: 7s\n")
    out = check_json(tmp_path, "--platform", "none", env=clean_env(GRACESHELL_CONFIG="other.yml"))
    assert out["processes"][0]["budget_s"] == {"value": 7.0, "from": "other.yml:1: budget"}


def test_check_text_output_and_warnings(tmp_path):
    write(tmp_path, "Procfile", "sk: bundle exec sidekiq -t 25\n")
    write(tmp_path, "graceshell.yml", "platform: fly\nprocesses:\n  sk:\n    preset: sidekiq\n")
    proc = graceshell(tmp_path, "check")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("sk (Procfile:1): bundle exec sidekiq -t 25\n")
    assert "platform timeout 5s" in proc.stdout and "(platform fly)" in proc.stdout
    assert "warning: the fly platform kills 5s after its stop signal" in proc.stdout
    assert "warning: sidekiq's -t 25s does not fit" in proc.stdout


def test_check_detects_the_platform_and_says_how(tmp_path):
    out = check_json(tmp_path, env=clean_env(DYNO="worker.1"))
    entry = out["processes"][0]
    assert entry["platform"] == {"value": "heroku", "from": "env DYNO"}
    assert entry["platform_timeout_s"]["value"] == 30.0 and entry["budget_s"]["value"] == 25.0


# -- run with Procfile, config and .env ------------------------------------------------------

def test_run_process_type_applies_its_section_and_dotenv(tmp_path):
    write(tmp_path, "Procfile", f"worker: {sys.executable} {WORKER} $STATE --exit-on QUIT\n")
    write(tmp_path, "graceshell.yml", "platform: none\nprocesses:\n  worker:\n    remap: {TERM: QUIT}\n")
    write(tmp_path, ".env", f"export STATE='{tmp_path}'\nFROM_DOTENV=\"a b\" # comment\nWINS=dotenv\n")
    env = clean_env(WINS="real", GRACESHELL_LOG_FORMAT="json")
    proc = subprocess.Popen([*GRACESHELL, "run", "worker"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    ready = tmp_path / "ready.json"
    from conftest import wait_for

    wait_for(ready.exists, 10, "worker ready")
    pid = json.loads(ready.read_text())["pid"]
    proc.send_signal(15)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in err.splitlines()]
    start = events[0]
    assert start["pid"] == pid  # `sh -c 'exec ...'`: the worker itself is graceshell's child
    assert start["process"] == "worker"
    assert (tmp_path / f"{pid}.log").read_text().split()[0] == "QUIT"
    environ = Path(f"/proc/{pid}/environ")
    assert not environ.exists()  # it is gone; the environment is checked below instead


def test_worker_environment_real_env_wins_over_dotenv_and_preset(tmp_path):
    write(tmp_path, ".env", "FROM_DOTENV='it''s'\nWINS=dotenv\nTERM_CHILD=from-dotenv\n")
    write(tmp_path, ".env", "FROM_DOTENV=\"a \\\"b\\\"\"\nWINS=dotenv\n")
    proc = graceshell(tmp_path, "run", "--platform", "none", "--preset", "resque", "--", "sh", "-c",
                      'printf "%s|%s|%s" "$FROM_DOTENV" "$WINS" "$TERM_CHILD"', env=clean_env(WINS="real"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == 'a "b"|real|1'


def test_dyno_name_selects_the_config_section(tmp_path):
    write(tmp_path, "graceshell.yml", "processes:\n  worker:\n    budget: 12s\n")
    proc = graceshell(tmp_path, "run", "--", "true", env=clean_env(DYNO="worker.2", GRACESHELL_LOG_FORMAT="json"))
    assert proc.returncode == 0, proc.stderr
    start = json.loads(proc.stderr.splitlines()[0])
    assert start["process"] == "worker.2" and start["budget_s"] == 12.0 and start["platform"] == "heroku"


# -- parsers -------------------------------------------------------------------------------

def test_procfile_rules():
    procfile = parse_procfile("# comment\n\nweb: gunicorn app\n  worker_2-x:celery  -A app\n")
    assert procfile.processes == {"web": "gunicorn app", "worker_2-x": "celery  -A app"}
    assert procfile.lines == {"web": 3, "worker_2-x": 4}


@pytest.mark.parametrize("command, argv", [
    ("celery -A app worker", ["celery", "-A", "app", "worker"]),
    ("rq worker 'high prio'", ["rq", "worker", "high prio"]),
    ("gunicorn --bind :$PORT", ["sh", "-c", "exec gunicorn --bind :$PORT"]),
    ("FOO=1 celery worker", ["sh", "-c", "exec FOO=1 celery worker"]),
    ("a | b", ["sh", "-c", "a | b"]),
    ("exec celery worker", ["celery", "worker"]),
    ("python -c 'import a; a.b()' $X", ["sh", "-c", "exec python -c 'import a; a.b()' $X"]),
    ("cd app && celery worker", ["sh", "-c", "cd app && celery worker"]),
])
def test_command_needs_a_shell_only_when_it_must(command, argv):
    assert command_argv(command, "Procfile:1") == argv


def test_dotenv_rules():
    env = parse_dotenv("# c\nexport A=1\nB = two words # comment\nC='$NOT \\n expanded'\nD=\"x\\ny\"\nE=\n")
    assert env == {"A": "1", "B": "two words", "C": "$NOT \\n expanded", "D": "x\ny", "E": ""}


def test_a_procfile_line_that_runs_graceshell_is_unwrapped(tmp_path):
    """The Procfile a platform runs (`worker: graceshell run --preset rq -- ...`) works locally too:
    the worker's own command runs under one graceshell, with the line's flags."""
    write(tmp_path, "Procfile", f"worker: graceshell run --preset rq --budget 9s -- {sys.executable} {WORKER} "
                                f"{tmp_path} --exit-on TERM\n")
    out = check_json(tmp_path, "--platform", "none")
    (entry,) = out["processes"]
    assert entry["command"][:2] == [sys.executable, WORKER]
    assert entry["preset"] == {"value": "rq", "from": "Procfile:1 --preset"}
    assert entry["budget_s"] == {"value": 9.0, "from": "Procfile:1 --budget"}
    flagged = check_json(tmp_path, "--platform", "none", "--budget", "7s")["processes"][0]
    assert flagged["budget_s"] == {"value": 7.0, "from": "--budget"}  # the outer command's flags win
    proc = subprocess.Popen([*GRACESHELL, "run", "--platform", "none", "worker"], cwd=tmp_path,
                            env=clean_env(GRACESHELL_LOG_FORMAT="json"), stderr=subprocess.PIPE, text=True)
    from conftest import wait_for

    wait_for((tmp_path / "ready.json").exists, 10, "worker ready")
    proc.send_signal(15)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    start = json.loads(err.splitlines()[0])
    assert start["pid"] == json.loads((tmp_path / "ready.json").read_text())["pid"]  # no graceshell in between
    assert start["budget_s"] == 9.0


@pytest.mark.parametrize("value", [OrderedDict(a=1), namedtuple("Pair", "a b")(1, 2), frozenset({1})])
def test_parsers_name_a_container_subclass_in_a_value_error(value):
    """Only ValueError leaves a parser, whatever type of value a YAML loader or caller hands it."""
    from graceshell.durations import parse_duration
    from graceshell.signals import parse_signal

    for parse in (parse_duration, parse_signal):
        with pytest.raises(ValueError):
            parse(value)


# -- check as a CI gate ------------------------------------------------------------------------

@pytest.mark.parametrize("args, env", [
    (["--platform", "docker", "--budget", "4s", "--ladder", "TERM@0s,QUIT@budget-5s"], {}),
    (["--preset", "celery"], {"RAILWAY_REPLICA_ID": "r"}),
])
def test_every_error_line_of_check_exits_2(tmp_path, args, env):
    proc = graceshell(tmp_path, "check", *args, "--", "sleep", "1", env=clean_env(**env))
    assert "  error: " in proc.stdout
    assert proc.returncode == 2 and proc.stderr == "graceshell: check: 1 error\n"


def test_check_strict_fails_on_a_warning_and_names_a_command_not_on_path(tmp_path):
    write(tmp_path, "Procfile", "worker: no-such-worker-cmd --queue a\n")
    lenient = graceshell(tmp_path, "check", "--platform", "none")
    assert lenient.returncode == 0, lenient.stderr
    assert "warning: no-such-worker-cmd is not on PATH: `graceshell run` would exit 127" in lenient.stdout
    strict = graceshell(tmp_path, "check", "--platform", "none", "--strict")
    assert strict.returncode == 1 and strict.stderr == "graceshell: check: 1 warning (--strict)\n"
    assert graceshell(tmp_path, "check", "--platform", "none", "--strict", "--", "sleep", "1").returncode == 0


def test_check_takes_a_command_after_double_dash_as_run_does(tmp_path):
    write(tmp_path, "graceshell.yml", "processes:\n  worker:\n    budget: 7s\n")
    (entry,) = check_json(tmp_path, "--platform", "docker", "--preset", "rq", "--", "rq", "worker", "high",
                          "--burst")["processes"]
    assert entry["command"] == ["rq", "worker", "high", "--burst"] and entry["source"] == "command line"
    assert entry["preset"]["value"] == "rq" and entry["budget_s"]["value"] == 8.0
    # A process type before `--` names the graceshell.yml section, as `run --name` does.
    (named,) = check_json(tmp_path, "--platform", "docker", "worker", "--", "sleep", "1")["processes"]
    assert named["process"] == "worker" and named["budget_s"]["value"] == 7.0


def test_durations_are_rounded_to_the_millisecond_in_what_machines_read(tmp_path):
    """6s - 20% is 4.8, not 4.800000000000001: in check, in the events, in drill."""
    (entry,) = check_json(tmp_path, "--platform", "docker", "--platform-timeout", "6s", "--preset", "celery",
                          "--", "sleep", "1")["processes"]
    assert entry["budget_s"]["value"] == 4.8 and entry["cold_reserve_s"]["value"] == 2.4
    assert [step["at"] for step in entry["ladder"]["value"]] == [0.0, 2.4, 4.8]
    run = graceshell(tmp_path, "run", "--platform", "docker", "--platform-timeout", "6s", "--log-format", "json",
                     "--", "true")
    events = [json.loads(line) for line in run.stderr.splitlines()]
    assert events[0]["budget_s"] == events[-1]["budget_s"] == 4.8
    drill = graceshell(tmp_path, "drill", "--json", "--platform", "docker", "--platform-timeout", "6s",
                       "--after", "0.2s", "--", "sleep", "5", timeout=30)
    assert "00000000" not in drill.stdout and "99999999" not in drill.stdout
    assert "00000000" not in run.stderr + json.dumps(entry)
    assert parse_duration("0.1h") == 360.0 and parse_duration("1.0004s") == 1.0


def test_podman_is_detected_by_its_containerenv_file_and_gets_its_10s(tmp_path, monkeypatch):
    from graceshell.config import platforms

    monkeypatch.setattr(platforms.os.path, "exists", lambda path: path == "/run/.containerenv")
    platform, how = platforms.detect_platform({})
    assert (platform.name, how, platform.timeout) == ("podman", "file /run/.containerenv", 10.0)
    (entry,) = check_json(tmp_path, "--platform", "podman", "--", "sleep", "1")["processes"]
    assert entry["platform_timeout_s"]["value"] == 10.0 and entry["budget_s"]["value"] == 8.0


def test_the_user_says_which_stop_model_applies(tmp_path):
    """systemd with KillMode=mixed signals graceshell alone: no warning that
    every process gets the TERM once `broadcast: pid1` says so."""
    systemd = clean_env(INVOCATION_ID="x", JOURNAL_STREAM="8:1")
    (default,) = check_json(tmp_path, "--preset", "rq", "--", "sleep", "1", env=systemd)["processes"]
    assert default["broadcast"] == {"value": "all", "from": "platform systemd"}
    assert any("systemd sends its stop signal to every process" in w for w in default["warnings"])
    assert any("then say so with broadcast: pid1" in w for w in default["warnings"])
    write(tmp_path, "graceshell.yml", "broadcast: pid1\n")
    (mixed,) = check_json(tmp_path, "--preset", "rq", "--", "sleep", "1", env=systemd)["processes"]
    assert mixed["broadcast"]["value"] == "pid1" and mixed["broadcast"]["from"].startswith("graceshell.yml:1")
    assert not any("every process" in w for w in mixed["warnings"])
    (flag,) = check_json(tmp_path, "--broadcast", "all", "--", "sleep", "1", env=systemd)["processes"]
    assert flag["broadcast"] == {"value": "all", "from": "--broadcast"}


def test_a_duration_under_a_millisecond_is_refused_not_rounded_to_zero():
    """Durations are kept to the millisecond; 0.4 ms would silently become 0 s
    (a budget of nothing, an immediate step)."""
    assert parse_duration("0.5ms") == 0.001 and parse_duration("0") == 0.0
    with pytest.raises(ValueError, match="under a millisecond"):
        parse_duration("0.0004s")
