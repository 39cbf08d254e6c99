"""The wheel and the sdist, built from the source tree as a clean clone has it,
installed into a fresh virtual environment from the registry's packages alone.

An editable install can hide a missing data file, a dependency the project
forgot to declare, or an entry point that only works from the source tree;
this module runs graceshell the way `pip install graceshell` leaves it. The
build and the install happen once for the module (pip's cache makes a repeat
take seconds).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import venv
import zipfile
from pathlib import Path
from typing import Any

import pytest

from conftest import clean_env, wait_for

ROOT = Path(__file__).resolve().parent.parent
# Data files that exist only in the copy we build, beside the modules and in a
# folder of their own: proof that the wheel takes package data by a general
# rule, not by a list of names.
PROBES = ("graceshell/integrations/packaging_probe.rb", "graceshell/integrations/probe_data/probe.rb")
IGNORED_IN_COPY = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__",
                                         ".pytest_cache", "*.pyc")


def _source_files() -> list[str]:
    """The files a clean clone has (tracked, plus new files not ignored)."""
    try:
        listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard"],
                                capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return []  # not a git checkout (an unpacked sdist): copy the tree instead
    return [name for name in listed if (ROOT / name).is_file()]


def _copy_source(dest: Path) -> None:
    files = _source_files()
    if not files:
        shutil.copytree(ROOT, dest, ignore=IGNORED_IN_COPY)
        return
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def venv_pip(env_dir: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"), "--disable-pip-version-check"]


class Installed:
    """A fresh venv with the built wheel installed; commands run outside the source tree."""

    def __init__(self, root: Path, wheel: Path, sdist: Path, source: Path) -> None:
        self.root = root
        self.wheel = wheel
        self.sdist = sdist
        self.source = source
        self.bin = root / "venv" / "bin"
        self.cwd = root / "elsewhere"  # no graceshell/ here to import by accident
        self.cwd.mkdir(exist_ok=True)

    def env(self) -> dict[str, str]:
        env = clean_env()
        for name in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP"):
            env.pop(name, None)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return env

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(self.bin / argv[0]), *argv[1:]], capture_output=True, text=True,
                                cwd=self.cwd, env=self.env(), stdin=subprocess.DEVNULL, timeout=60)
        if check:
            assert result.returncode == 0, f"{argv} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    _copy_source(source)
    for probe in PROBES:
        (source / probe).parent.mkdir(parents=True, exist_ok=True)
        (source / probe).write_text("# data file: must ship in the wheel\n")
    dist = root / "dist"
    # The sdist first, then the wheel built from the unpacked sdist: a file the
    # sdist forgets breaks the wheel here, not on a user's machine.
    _run([sys.executable, "-m", "build", "--outdir", str(dist), str(source)], env=clean_env())
    (wheel,) = dist.glob("graceshell-*.whl")
    (sdist,) = dist.glob("graceshell-*.tar.gz")
    # `pip wheel .` builds straight from the tree, not through the sdist: it
    # must give the same files.
    direct = root / "direct"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check",
          "--wheel-dir", str(direct), str(source)], env=clean_env())
    (direct_wheel,) = direct.glob("graceshell-*.whl")
    with zipfile.ZipFile(wheel) as from_sdist, zipfile.ZipFile(direct_wheel) as from_tree:
        assert sorted(from_sdist.namelist()) == sorted(from_tree.namelist())
    # No pip of its own (ensurepip is the slowest part of making a venv): this
    # pip installs into it with --python.
    venv.EnvBuilder(with_pip=False, clear=True).create(root / "venv")
    # celery and rq are the frameworks whose integrations the wheel must carry;
    # everything else comes from the wheel's own dependencies.
    _run([*venv_pip(root / "venv"), "install", "--quiet", str(wheel), "celery", "rq"], cwd=root)
    return Installed(root, wheel, sdist, source)


def _source_version() -> str:
    text = (ROOT / "graceshell" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    assert match, "graceshell/__init__.py must define __version__"
    return match.group(1)


def test_the_wheel_carries_every_module_and_data_file(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        metadata = wheel.read(f"graceshell-{_source_version()}.dist-info/METADATA").decode()
    package_files = sorted(
        path.relative_to(installed.source).as_posix()
        for path in (installed.source / "graceshell").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts)
    missing = [name for name in package_files if name not in names]
    assert not missing, f"not in the wheel: {missing}"
    assert set(PROBES) <= names and "graceshell/py.typed" in names
    assert f"graceshell-{_source_version()}.dist-info/licenses/LICENSE" in names
    assert not [name for name in names if name.startswith("tests/") or name.endswith(".pyc")]
    for field in ("License-Expression: MIT", "Requires-Python: >=3.10", "Classifier: Typing :: Typed",
                  "Project-URL: Changelog", "Requires-Dist: click>=8.2", "Requires-Dist: structlog>=24.1",
                  "Requires-Dist: psutil", "Requires-Dist: pyyaml"):
        assert field in metadata, f"{field!r} missing from the wheel's METADATA"


def test_the_sdist_carries_docs_license_tests_and_examples(installed: Installed) -> None:
    with tarfile.open(installed.sdist) as sdist:
        top = f"graceshell-{_source_version()}/"
        names = {name.removeprefix(top) for name in sdist.getnames()}
    for wanted in ("LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "MANIFEST.in", "Makefile",
                   "graceshell/py.typed", *PROBES, "tests/conftest.py", "tests/test_packaging.py",
                   "examples/Procfile", "examples/graceshell.yml", "tools/install-test-deps", "docs/index.md", "mkdocs.yml",
                   "benchmarks/run.py"):
        assert wanted in names, f"{wanted} missing from the sdist"
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]


def test_version_comes_from_the_package(installed: Installed) -> None:
    output = installed.run("graceshell", "--version").stdout.strip()
    assert output.startswith("graceshell") and output.split()[-1] == _source_version(), output
    where = installed.run("python", "-c", "import graceshell; print(graceshell.__file__)").stdout.strip()
    assert Path(where).is_relative_to(installed.root / "venv"), f"imported from {where}, not the installed wheel"
    _run([*venv_pip(installed.root / "venv"), "check"])  # every dependency the wheel declares is there
    installed.run("python", "-c", "import graceshell.integrations.celery")


def test_run_supervises_and_stops_a_worker(installed: Installed) -> None:
    result = installed.run("graceshell", "run", "--platform", "none", "--log-format", "json", "--", "true")
    assert json.loads(result.stderr.splitlines()[-1])["outcome"] == "exited"

    stderr = installed.root / "run.stderr"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen([str(installed.bin / "graceshell"), "run", "--platform", "none", "--budget", "5s",
                                 "--log-format", "json", "--", "sleep", "60"],
                                stderr=err, stdin=subprocess.DEVNULL, cwd=installed.cwd, env=installed.env(),
                                start_new_session=True)
    try:
        wait_for(lambda: "graceshell.start" in stderr.read_text(), 20, "graceshell.start")
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(20) == 128 + signal.SIGTERM
        assert time.monotonic() - sent < 5  # well before the budget's KILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    report = json.loads(stderr.read_text().splitlines()[-1])
    assert report["event"] == "graceshell.exit" and report["outcome"] == "clean" and report["stop_signal"] == "TERM"


def test_the_celery_plugin_is_registered(installed: Installed) -> None:
    listing = installed.run("celery", "--help").stdout
    assert re.search(r"^\s+graceshell\s", listing, re.MULTILINE), f"no graceshell command in:\n{listing}"
    status = installed.run("celery", "graceshell")
    assert "installed, inactive" in status.stdout


def test_the_rq_worker_class_imports(installed: Installed) -> None:
    code = ("import rq, graceshell.integrations.rq as m; "
            "assert issubclass(m.Worker, rq.Worker); print(m.Worker.__module__)")
    assert installed.run("python", "-c", code).stdout.strip() == "graceshell.integrations.rq"


PACKAGING_JOBS = """
import os, time

def ledger():
    # The integrations write a job's entry once it has run 0.2 s (jobwriter.WRITE_AFTER).
    deadline = time.monotonic() + 10
    while not os.listdir(os.environ["GRACESHELL_JOBS_DIR"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return sorted(os.listdir(os.environ["GRACESHELL_JOBS_DIR"]))
"""


def test_the_rq_preset_runs_a_job_through_the_installed_worker_class(installed: Installed, redis_url: str) -> None:
    """`--preset rq` names graceshell.integrations.rq.Worker, and the wheel's copy records the job."""
    pytest.importorskip("rq")
    from redis import Redis
    from rq import Queue

    (installed.cwd / "packaging_jobs.py").write_text(PACKAGING_JOBS)
    redis = Redis.from_url(redis_url)
    try:
        job = Queue("packaging", connection=redis).enqueue("packaging_jobs.ledger")
        result = installed.run("graceshell", "run", "--platform", "none", "--preset", "rq", "--log-format", "json",
                               "--", "rq", "worker", "--burst", "--url", redis_url, "packaging")
        assert job.get_status(refresh=True) == "finished", result.stderr
        assert [name for name in job.return_value() if job.id in name], job.return_value()
    finally:
        redis.close()
