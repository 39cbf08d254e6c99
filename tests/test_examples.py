"""Every deployment example under examples/ is read the way its platform reads
it, and its graceshell command is checked with `graceshell check` against
the platform's own deadline: graceshell's final KILL must come before the
platform's. The Dockerfile's entrypoint also runs for real, as PID 1 of a new
PID namespace, with a real RQ worker."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from conftest import check_json, clean_env, kill_tree, run_cli, wait_for

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BIN = Path(sys.executable).parent


def check(tmp: Path, command: str, env: dict[str, str], name: str = "worker") -> dict[str, Any]:
    """`graceshell check --json` of one command, given as a Procfile line."""
    workdir = tmp / f"check-{name}"
    workdir.mkdir()
    (workdir / "Procfile").write_text(f"{name}: {command}\n")
    (entry,) = check_json(workdir, name, env=clean_env(**env))["processes"]
    return entry


def assert_fits(entry: dict[str, Any], platform: str, deadline: float) -> None:
    """graceshell knows the platform and its deadline, and kills before it."""
    assert entry["platform"]["value"] == platform, entry["platform"]
    assert entry["platform_timeout_s"]["value"] == deadline, entry["platform_timeout_s"]
    budget = entry["budget_s"]["value"]
    final_kill = entry["ladder"]["value"][-1]
    assert final_kill["signal"] == "KILL" and final_kill["at"] == budget
    assert 0 < budget < deadline, f"budget {budget}s does not end before the platform's {deadline}s"


# -- graceshell check inside examples/ ----------------------------------------------------------

PROCFILES = ("Procfile", "Procfile.frameworks")  # the runnable demo, and one line per framework to copy
PLATFORM_ENVS = {  # each platform as graceshell detects it (Railway's default 0 s allows no ladder at all)
    "heroku": {"DYNO": "worker.1"}, "render": {"RENDER": "true"},
    "fly": {"FLY_APP_NAME": "app", "FLY_MACHINE_ID": "148e272c4d3989"}, "cloudrun": {"K_SERVICE": "worker"},
    "ecs": {"ECS_CONTAINER_METADATA_URI_V4": "http://169.254.170.2/v4/x"},
    "kubernetes": {"KUBERNETES_SERVICE_HOST": "10.0.0.1"},
    "systemd": {"INVOCATION_ID": "0f4a6e8c2f2b4b1c9d1e", "JOURNAL_STREAM": "8:12345"},
}


def procfile_lines(procfile: str) -> list[tuple[str, str]]:
    return re.findall(r"^([A-Za-z0-9_-]+):\s*(.+)$", (EXAMPLES / procfile).read_text(), re.MULTILINE)


def test_check_passes_inside_examples() -> None:
    plain = subprocess.run([sys.executable, "-m", "graceshell", "check"], cwd=EXAMPLES, env=clean_env(),
                           capture_output=True, text=True, timeout=30)
    assert plain.returncode == 0 and not plain.stderr, plain.stderr
    for procfile in PROCFILES:
        result = subprocess.run([sys.executable, "-m", "graceshell", "check", "--json", "--procfile", procfile],
                                cwd=EXAMPLES, env=clean_env(DYNO="worker.1"), capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 0, result.stderr
        entries = {entry["process"]: entry for entry in json.loads(result.stdout)["processes"]}
        declared = [name for name, _ in procfile_lines(procfile)]
        assert declared and set(declared) <= set(entries)
        for entry in entries.values():
            assert_fits(entry, "heroku", 30.0)


@pytest.mark.parametrize("platform", sorted(PLATFORM_ENVS))
def test_no_ladder_step_of_the_examples_falls_on_the_stop(platform: str) -> None:
    """graceshell.yml's ladders hold on every platform's default timeout, Fly's
    5 s included: a fixed `budget-5s` would put the cold signal on t=0 there."""
    for procfile in PROCFILES:
        result = run_cli("check", "--json", "--procfile", procfile, cwd=EXAMPLES,
                         env=clean_env(**PLATFORM_ENVS[platform]))
        entries = json.loads(result.stdout)["processes"]
        assert {entry["platform"]["value"] for entry in entries} == {platform}
        errors = {entry["process"]: entry["errors"] for entry in entries if entry["errors"]}
        assert not errors, f"{procfile} on {platform}: {errors}"


def test_the_framework_lines_name_modules_that_exist() -> None:
    """Each framework line runs a real command or module of graceshell's; only `app` is the user's."""
    for _, command in procfile_lines("Procfile.frameworks"):
        modules = re.findall(r"\b(graceshell\.integrations\.[a-z_]+)", command)
        for module in modules:
            assert (Path(__file__).resolve().parent.parent / (module.replace(".", "/") + ".py")).exists(), module


# -- graceshell start inside examples/, and the demo --------------------------------------------

def _path_env(**extra: str) -> dict[str, str]:
    """This checkout's venv first on PATH, as an activated venv (or a pipx install) has it."""
    return clean_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra)


def test_start_inside_examples_runs_the_demo_and_a_ctrl_c_stops_it(tmp_path: Path) -> None:
    """`cd examples && graceshell start`, then Ctrl-C: the terminal's INT reaches
    every process of the foreground group, here `start` and its children's
    groups alike as start forwards it; every process stops cleanly, no traceback."""
    output = tmp_path / "output"
    with open(output, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "graceshell", "start", "--log-format", "json"], cwd=EXAMPLES,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=_path_env(), start_new_session=True)
    try:
        wait_for(lambda: "job 1: done" in output.read_text() or proc.poll() is not None, 30, "the demo's first job")
        assert proc.poll() is None, output.read_text()
        os.killpg(proc.pid, signal.SIGINT)  # a Ctrl-C
        assert proc.wait(30) == 0, output.read_text()
    finally:
        kill_tree(proc)
    text = output.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert "stopped cleanly" in text, text
    # Under start every graceshell event is a JSON line of its own, the process a key.
    reports = [json.loads(line) for line in text.splitlines() if line.startswith("{") and '"graceshell.exit"' in line]
    assert [(report["process"], report["outcome"], report["exit_code"]) for report in reports] == \
        [("worker.1", "clean", 0)], text


def test_the_demo_worker_takes_a_ctrl_c_as_a_warm_stop(tmp_path: Path) -> None:
    """Without graceshell.yml's remap (the generic preset passes INT on as it
    came), the demo worker finishes its job on INT too: no KeyboardInterrupt."""
    result_file = tmp_path / "output"
    with open(result_file, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "graceshell", "run", "--platform", "none", "--log-format",
                                 "json", "--linger", "0.2s", "--", sys.executable, str(EXAMPLES / "demo_worker.py")],
                                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=clean_env(), start_new_session=True)
    try:
        wait_for(lambda: "job 1: started" in result_file.read_text(), 20, "the demo's first job")
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(20) == 0, result_file.read_text()
    finally:
        kill_tree(proc)
    text = result_file.read_text()
    assert "got SIGINT" in text and "Traceback" not in text, text
    report = json.loads(text.splitlines()[-1])
    assert report["outcome"] == "clean" and report["stop_signal"] == "INT", report


def test_the_demo_shows_a_clean_stop_and_a_kill_that_orphans_a_job() -> None:
    """examples/demo.sh as `make demo` runs it, in JSON: one report per scene."""
    result = subprocess.run(["bash", str(EXAMPLES / "demo.sh")], env=_path_env(
        GRACESHELL=str(BIN / "graceshell"), GRACESHELL_LOG_FORMAT="json"),
        capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    clean, killed = [event for event in events if event["event"] == "graceshell.exit"]
    assert clean["outcome"] == "clean" and clean["exit_code"] == 0 and clean["orphaned_jobs"] == []
    assert killed["outcome"] == "killed" and killed["exit_code"] == 137 and killed["signal"] == "KILL"
    assert killed["budget_s"] < killed["platform_timeout_s"]  # graceshell's KILL, before the platform's
    (job,) = killed["orphaned_jobs"]
    assert job["name"] == "demo.work"
    assert [event["id"] for event in events if event["event"] == "graceshell.orphaned_job"] == [job["id"]]
    assert "job 1: done" not in result.stdout.split("a job too long")[1], result.stdout


def test_make_demo_installs_graceshells_runtime_dependencies_alone() -> None:
    """`make demo` needs no test set: it installs `.` alone; `make test` adds the test extra."""
    root = EXAMPLES.parent
    demo = subprocess.run(["make", "-n", "-B", "demo"], cwd=root, capture_output=True, text=True, timeout=30)
    assert demo.returncode == 0, demo.stderr
    installs = [line for line in demo.stdout.splitlines() if "pip install" in line]
    assert installs and all("[" not in line for line in installs), demo.stdout
    assert "examples/demo.sh" in demo.stdout
    test = subprocess.run(["make", "-n", "-B", "test"], cwd=root, capture_output=True, text=True, timeout=30)
    assert "'.[test]'" in test.stdout, test.stdout


# -- Heroku -------------------------------------------------------------------------------------

def test_heroku_procfile_is_detected_by_dyno(tmp_path: Path) -> None:
    """On a dyno, $DYNO names the platform and, by its type, the process."""
    for procfile in PROCFILES:
        for name, command in procfile_lines(procfile):
            entry = check(tmp_path, command, {"DYNO": f"{name}.1"}, name)
            assert entry["platform"]["from"] == "env DYNO"
            assert_fits(entry, "heroku", 30.0)
            assert any("every process" in warning for warning in entry["warnings"])  # Heroku's broadcast


def test_on_a_dyno_run_takes_heroku_and_the_dynos_section() -> None:
    """`celery.1` selects graceshell.yml's `celery` section, whatever the command."""
    result = subprocess.run([sys.executable, "-m", "graceshell", "run", "--log-format", "json", "--", "true"],
                            cwd=EXAMPLES, env=clean_env(DYNO="celery.1"), capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stderr.splitlines()[-1])
    assert report["platform"] == "heroku" and report["platform_timeout_s"] == 30.0 and report["budget_s"] == 25.0
    assert report["process"] == "celery.1"
    assert [step["signal"] for step in report["ladder"]] == ["TERM", "QUIT", "KILL"]  # the celery section's


# -- Fly.io -------------------------------------------------------------------------------------

def test_fly_toml_budget_ends_before_kill_timeout(tmp_path: Path) -> None:
    fly = tomllib.loads((EXAMPLES / "fly.toml").read_text())
    kill_timeout = float(fly.get("kill_timeout", 5))  # Fly's default
    kill_signal = fly.get("kill_signal", "SIGINT").removeprefix("SIG")  # Fly's default
    env = {"FLY_APP_NAME": fly["app"], "FLY_MACHINE_ID": "148e272c4d3989", **fly.get("env", {})}
    assert fly["processes"], "fly.toml runs no process"
    for name, command in fly["processes"].items():
        entry = check(tmp_path, command, env, name)
        assert_fits(entry, "fly", kill_timeout)
        assert kill_signal in entry["stop_signals"]["value"], f"graceshell does not stop on {kill_signal}"


# -- Render -------------------------------------------------------------------------------------

def test_render_yaml_budget_ends_before_max_shutdown_delay(tmp_path: Path) -> None:
    blueprint = yaml.safe_load((EXAMPLES / "render.yaml").read_text())
    workers = [service for service in blueprint["services"] if service["type"] == "worker"]
    assert workers
    for service in workers:
        delay = float(service.get("maxShutdownDelaySeconds", 30))  # Render's default
        assert 1 <= delay <= 300, "Render accepts 1 to 300 s"
        env = {"RENDER": "true", "RENDER_SERVICE_ID": "srv-example",
               **{var["key"]: str(var["value"]) for var in service.get("envVars", []) if "value" in var}}
        entry = check(tmp_path, service["startCommand"], env, service["name"])
        assert_fits(entry, "render", delay)


# -- Kubernetes ---------------------------------------------------------------------------------

def _prestop_seconds(container: dict[str, Any]) -> float:
    """How much of the grace period a preStop hook may use (it counts against it)."""
    hook = container.get("lifecycle", {}).get("preStop")
    if not hook:
        return 0.0
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    words = hook.get("exec", {}).get("command", [])
    match = re.search(r"\bsleep\s+(\d+(?:\.\d+)?)", " ".join(words))
    assert match, f"cannot tell how long the preStop hook {hook} takes"
    return float(match.group(1))


def test_kubernetes_budget_ends_before_the_grace_period(tmp_path: Path) -> None:
    pod = _deployment()["spec"]["template"]["spec"]
    grace = float(pod.get("terminationGracePeriodSeconds", 30))  # Kubernetes' default
    for container in pod["containers"]:
        argv = [*container.get("command", []), *container.get("args", [])]
        assert argv[:2] == ["graceshell", "run"], f"container {container['name']} does not run graceshell"
        env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1",
               **{var["name"]: var["value"] for var in container.get("env", []) if "value" in var}}
        entry = check(tmp_path, shlex.join(argv), env, container["name"])
        # The kubelet's SIGKILL comes `grace` seconds after preStop starts; the
        # TERM graceshell waits for comes only after preStop ends.
        assert_fits(entry, "kubernetes", entry["platform_timeout_s"]["value"])
        assert entry["platform_timeout_s"]["value"] <= grace - _prestop_seconds(container)


def _deployment() -> dict[str, Any]:
    documents = list(yaml.safe_load_all((EXAMPLES / "kubernetes" / "worker.yaml").read_text()))
    (deployment,) = [doc for doc in documents if doc and doc["kind"] == "Deployment"]
    return deployment


def test_kubernetes_runs_the_dockerfiles_worker_as_its_user() -> None:
    """The manifest runs the image examples/Dockerfile builds: its CMD, its
    ENTRYPOINT (plus the grace period), and its unprivileged user."""
    docker = _dockerfile()
    pod = _deployment()["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == json.loads(docker["CMD"])
    entrypoint, command = json.loads(docker["ENTRYPOINT"]), container["command"]
    added = command[len(entrypoint) - 1:-1]  # what the manifest adds before the `--`
    assert command[:len(entrypoint) - 1] + command[-1:] == entrypoint and added[0] == "--platform-timeout", command
    uid = re.search(r"^RUN useradd\b.*--uid (\d+)", (EXAMPLES / "Dockerfile").read_text(), re.MULTILINE)
    assert uid and pod["securityContext"]["runAsUser"] == int(uid.group(1))
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
    if security.get("readOnlyRootFilesystem"):  # graceshell's run directory needs a writable $TMPDIR
        tmp = [mount for mount in container["volumeMounts"] if mount["mountPath"] == "/tmp"]
        assert tmp, "a read-only root file system needs a volume on /tmp"


# -- systemd ------------------------------------------------------------------------------------

def _timespan(text: str) -> float:
    """A systemd time span: `90`, `90s`, `1min 30s`, `2m`, `500ms`."""
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text.strip())
    assert parts, f"not a time span: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def _unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read(EXAMPLES / "systemd" / "graceshell-worker.service")
    return unit


def test_systemd_unit_budget_ends_before_timeout_stop_sec(tmp_path: Path) -> None:
    service = _unit()["Service"]
    assert service["KillMode"] == "mixed", "control-group would signal every process of the unit at once"
    assert service.get("SendSIGKILL", "yes") == "yes"
    timeout = _timespan(service.get("TimeoutStopSec", "90"))  # DefaultTimeoutStopSec
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "graceshell" and argv[1] == "run"
    env = {"INVOCATION_ID": "0f4a6e8c2f2b4b1c9d1e", "JOURNAL_STREAM": "8:12345",
           **dict(item.split("=", 1) for item in shlex.split(service.get("Environment", "")))}
    entry = check(tmp_path, shlex.join(["graceshell", *argv[1:]]), env)
    assert_fits(entry, "systemd", timeout)
    stop = service.get("KillSignal", "SIGTERM").removeprefix("SIG")
    assert stop in entry["stop_signals"]["value"]
    # check cannot see the unit's KillMode: the unit says it with --broadcast pid1, so no broadcast warning.
    assert "--broadcast" in argv and argv[argv.index("--broadcast") + 1] == "pid1"
    assert entry["broadcast"]["value"] == "pid1", entry["broadcast"]
    assert not any("KillMode" in warning for warning in entry["warnings"]), entry["warnings"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """The unit as systemd reads it; only its paths point at this checkout's venv."""
    text = (EXAMPLES / "systemd" / "graceshell-worker.service").read_text()
    text = text.replace("/srv/app/.venv/bin/", f"{BIN}/").replace("/srv/app", str(tmp_path))
    unit = tmp_path / "graceshell-worker.service"
    unit.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if unit.name in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


# -- Docker: the entrypoint as PID 1 ------------------------------------------------------------

def _dockerfile() -> dict[str, Any]:
    instructions: dict[str, Any] = {}
    text = (EXAMPLES / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            instructions[keyword.upper()] = rest.strip()
    return instructions


UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]
RQ_JOBS = """
import os, subprocess, time

def work(seconds):
    marks = os.environ["MARKS_DIR"]
    from rq import get_current_job
    job_id = get_current_job().id
    # A daemon that outlives its parent: orphaned, it is PID 1's to reap.
    subprocess.run(["sh", "-c", "sleep 0.2 &"], check=True)
    open(os.path.join(marks, "started-" + job_id), "w").close()
    time.sleep(seconds)
    open(os.path.join(marks, "done-" + job_id), "w").close()
    return seconds
"""


def test_dockerfile_uses_exec_form_and_a_stop_signal_graceshell_takes(tmp_path: Path) -> None:
    docker = _dockerfile()
    entrypoint = json.loads(docker["ENTRYPOINT"])  # exec form: graceshell itself is PID 1
    assert entrypoint[:2] == ["graceshell", "run"] and entrypoint[-1] == "--"
    command = json.loads(docker["CMD"])
    entry = check(tmp_path, shlex.join([*entrypoint, *command]), {})
    assert docker["STOPSIGNAL"].removeprefix("SIG") in entry["stop_signals"]["value"]


@pytest.mark.parametrize("stop", ["pid1", "broadcast"])
def test_dockerfile_entrypoint_as_pid_1(tmp_path: Path, redis_url: str, stop: str) -> None:
    """The image's ENTRYPOINT and CMD as PID 1 of a new PID namespace: a job in
    flight finishes, orphans are reaped, and the exit report is printed."""
    if os.geteuid() != 0 or shutil.which("unshare") is None \
            or subprocess.run([*UNSHARE, "true"], capture_output=True).returncode:
        pytest.skip("PID namespaces are not available here (unshare needs root)")
    from redis import Redis
    from rq import Queue

    docker = _dockerfile()
    queue = f"docker-{stop}"
    command = [redis_url if word.startswith("redis://") else word for word in json.loads(docker["CMD"])]
    command = [*command[:-1], queue]  # the image's worker, on this test's Redis and queue
    marks = tmp_path / "marks"
    marks.mkdir()
    (tmp_path / "docker_jobs.py").write_text(textwrap.dedent(RQ_JOBS))
    env = clean_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONPATH=str(tmp_path),
                    MARKS_DIR=str(marks))
    stderr = tmp_path / "stderr"
    redis = Redis.from_url(redis_url)
    with open(stderr, "wb") as err:
        proc = subprocess.Popen([*UNSHARE, *json.loads(docker["ENTRYPOINT"]), *command], stderr=err,
                                stdin=subprocess.DEVNULL, env=env, cwd=tmp_path, start_new_session=True)
    try:
        job = Queue(queue, connection=redis).enqueue("docker_jobs.work", 1.5, job_timeout=600)
        wait_for(lambda: (marks / f"started-{job.id}").exists() or proc.poll() is not None, 60, "the job running")
        assert proc.poll() is None, stderr.read_text()
        (init,) = psutil.Process(proc.pid).children()
        assert init.cmdline()[1:3] == ["-m", "graceshell"] or Path(init.cmdline()[1]).name == "graceshell"
        assert _pid_in_namespace(init.pid) == 1

        def daemon_reaped() -> bool:
            return not [kid for kid in init.children() if kid.status() == psutil.STATUS_ZOMBIE
                        or kid.name() == "sleep"]

        wait_for(daemon_reaped, 10, "the orphaned daemon reaped by PID 1")
        if stop == "pid1":  # docker stop, Kubernetes, ECS: the STOPSIGNAL to PID 1 only
            os.kill(init.pid, signal.SIGTERM)
        else:  # the same signal to every process of the container at once
            for process in [init, *init.children(recursive=True)]:
                try:
                    process.send_signal(signal.SIGTERM)
                except psutil.NoSuchProcess:
                    pass
        assert proc.wait(30) == 0, stderr.read_text()
        fate = job.get_status(refresh=True)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        redis.close()
    assert str(getattr(fate, "value", fate)) == "finished"
    assert (marks / f"done-{job.id}").exists()
    report = json.loads(stderr.read_text().splitlines()[-1])
    assert report["event"] == "graceshell.exit" and report["outcome"] == "clean", report
    assert report["reaped_orphans"] >= 1 and report["orphaned_jobs"] == []


def _pid_in_namespace(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    raise AssertionError("no NSpid line")
