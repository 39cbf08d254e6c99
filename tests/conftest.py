"""Helpers to run graceshell for real: a subprocess, real signals, real pids."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from graceshell.engine.guard import NAME as GUARD_NAME

WORKER = str(Path(__file__).with_name("worker.py"))
# Where the survival tests' rows are written as JSON, when set (tools/survival_matrix.py sets it).
SURVIVAL_EXPORT_ENV = "GRACESHELL_SURVIVAL_EXPORT"
PLATFORM_VARS = ("DYNO", "RENDER", "RENDER_INSTANCE_ID", "RENDER_SERVICE_ID", "FLY_APP_NAME", "FLY_MACHINE_ID",
                 "RAILWAY_REPLICA_ID", "RAILWAY_DEPLOYMENT_ID", "RAILWAY_DEPLOYMENT_DRAINING_SECONDS",
                 "K_SERVICE", "CLOUD_RUN_JOB", "ECS_CONTAINER_METADATA_URI_V4", "KUBERNETES_SERVICE_HOST",
                 "INVOCATION_ID", "JOURNAL_STREAM", "GRACESHELL_LOG_FORMAT", "GRACESHELL_LOG_LEVEL")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PLATFORM_VARS}
    env.update(extra)
    return env


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def is_guard(proc: psutil.Process) -> bool:
    """graceshell's own guard process (argv[0] graceshellguard), no part of the worker's tree."""
    try:
        return proc.cmdline()[:1] == [GUARD_NAME]
    except psutil.Error:  # a zombie, or gone
        return False


GRACESHELL = [sys.executable, "-m", "graceshell"]


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """One `graceshell ARGS...` to its end, its output as text; the test environment unless `env`."""
    return subprocess.run([*GRACESHELL, *args], cwd=cwd, env=env if env is not None else clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def check_json(cwd: Path, *args: str, env: dict[str, str] | None = None, status: int = 0) -> dict[str, Any]:
    """`graceshell check --json ARGS...` in `cwd`, which must exit with `status`
    (2 when it finds an error)."""
    proc = run_cli("check", "--json", *args, cwd=cwd, env=env)
    assert proc.returncode == status, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One directory for a module's generated inputs (the fuzz tests write thousands of examples)."""
    return tmp_path_factory.mktemp("fuzz")


def kill_tree(proc: subprocess.Popen) -> None:
    """`proc` and every process under it, SIGKILLed (listed first) if it is still running: none may
    outlive the test."""
    if proc.poll() is not None:
        return
    try:
        root = psutil.Process(proc.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for each in tree:
        try:
            each.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(5)


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `predicate` until it is truthy. A process that ends while the predicate looks at it
    (psutil's NoSuchProcess between a listing and a status) is a moment of the race being waited
    on, not a failure: the predicate is asked again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except psutil.NoSuchProcess:
            value = None
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class Run:
    """One `graceshell run` in its own session, logging JSON to a file."""

    def __init__(self, tmp: Path, args: list[str], env: dict[str, str] | None) -> None:
        self.state = tmp
        self.stderr_path = tmp / "graceshell.stderr"
        self.stdout_path = tmp / "graceshell.stdout"
        with open(self.stderr_path, "wb") as err, open(self.stdout_path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "graceshell", "run", *args],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                env=env if env is not None else clean_env(), start_new_session=True)
        self.pid = self.proc.pid

    def ready(self, timeout: float = 10.0) -> dict[str, Any]:
        path = self.state / "ready.json"
        wait_for(lambda: path.exists() or self.proc.poll() is not None, timeout, "worker ready")
        assert path.exists(), f"worker never got ready: {self.stderr()}"
        # graceshell logs its start once the worker runs (its logging is set
        # up after the spawn): ready means both are.
        wait_for(lambda: "graceshell.start" in self.stderr() or self.proc.poll() is not None, timeout,
                 "graceshell.start")
        return json.loads(path.read_text())

    def signals(self, pid: int) -> list[tuple[str, float]]:
        path = self.state / f"{pid}.log"
        if not path.exists():
            return []
        return [(line.split()[0], float(line.split()[1])) for line in path.read_text().splitlines()]

    def names(self, pid: int) -> list[str]:
        return [name for name, _ in self.signals(pid)]

    def kill(self, signum: int) -> float:
        sent = time.monotonic()
        os.kill(self.pid, signum)
        return sent

    def wait(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.stderr().splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
        return found

    def event(self, name: str) -> dict[str, Any]:
        matches = [e for e in self.events() if e["event"] == name]
        assert matches, f"no {name} event in: {self.stderr()}"
        return matches[-1]

    def report(self) -> dict[str, Any]:
        return self.event("graceshell.exit")

    def cleanup(self) -> None:
        kill_tree(self.proc)


@pytest.fixture
def graceshell(tmp_path: Path):
    """graceshell(*run_args, env=None) -> Run; everything is killed at teardown."""
    runs: list[Run] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Run:
        run = Run(tmp_path, list(args), env)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.cleanup()


@pytest.fixture
def worker(tmp_path: Path):
    """The argv of the test worker, after `--`: worker(*worker_args)."""

    def argv(*args: str) -> list[str]:
        return ["--", sys.executable, WORKER, str(tmp_path), *args]

    return argv


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A redis-server of the tests' own, on a free loopback port."""
    import shutil
    import socket

    server = shutil.which("redis-server")
    if server is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing: .ci/run installs it")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    try:
        wait_for(answers, 10, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def framework_stops(request, tmp_path_factory, redis_url):
    """Every stop of the survival tests registered with `scenarios_of`
    (Dramatiq, Huey, arq), for the frameworks whose tests are selected, all
    run at once: each mostly waits on a sleeping job or a timeout, so
    together they cost the time of the slowest. {framework: {key: outcome}}."""
    from survival_helpers import SCENARIO_BUILDERS, run_concurrently

    modules = {item.module.__name__ for item in request.session.items}
    selected = [name for name, build in SCENARIO_BUILDERS.items() if build.__module__ in modules]
    runs = {(name, key): run for name in selected
            for key, run in SCENARIO_BUILDERS[name](tmp_path_factory, redis_url).items()}
    outcomes = run_concurrently(runs)
    return {name: {key: value for (owner, key), value in outcomes.items() if owner == name} for name in selected}


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """How many examples the fuzz tests ran, the benchmarks' smoke figures and
    the survival table of the end-to-end tests, for the runs that had them."""
    fuzz = sys.modules.get("fuzz_support")
    if fuzz is not None:
        fuzz.report(terminalreporter)
    try:
        from test_benchmarks import SMOKE_OUTPUT
    except ImportError:
        SMOKE_OUTPUT = []
    for output in SMOKE_OUTPUT:
        terminalreporter.section("benchmarks, smoke run (figures only, no thresholds)")
        for line in output.splitlines():
            terminalreporter.write_line(line)
    from survival_helpers import SURVIVAL

    if not SURVIVAL:
        return
    export = os.environ.get(SURVIVAL_EXPORT_ENV)
    if export:  # tools/survival_matrix.py turns the rows into the survival table
        Path(export).write_text(json.dumps(SURVIVAL, indent=1, default=str))
    terminalreporter.section("survival of a platform stop (SIGKILL at 10 s unless the row says otherwise)")
    width = max(len(f"{row['framework']} {row['model']}") for row in SURVIVAL)
    for row in SURVIVAL:
        jobs = ", ".join(f"{k}: {v}" for k, v in row.items()
                         if k not in ("framework", "model", "broadcast", "setup", "platform_sigkill"))
        cell = f"{row['framework']} {row['model']}"
        terminalreporter.write_line(f"{cell:<{width}} {row['broadcast']:<6} {row['setup']:<20} {jobs}"
                                    f"{'  (platform SIGKILL needed)' if row['platform_sigkill'] else ''}")

