"""The private run directory: made safely in $TMPDIR, swept up after a kill -9."""

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import clean_env, wait_for
from graceshell.engine import rundir


def predicted(base: Path, token: bytes) -> Path:
    return base / f"graceshell-{os.getpid()}-{token.hex()}"


@pytest.fixture
def urandom_sequence(monkeypatch):
    """Make the run directory's random part predictable: the attack assumes it is."""

    def use(*tokens: bytes) -> None:
        queue = list(tokens)
        real = os.urandom
        monkeypatch.setattr(rundir.os, "urandom", lambda n: queue.pop(0) if queue else real(n))

    return use


def test_the_name_is_unpredictable_and_the_directory_private(tmp_path):
    roots = {rundir.create(str(tmp_path)) for _ in range(50)}
    assert len(roots) == 50
    for root in roots:
        name = os.path.basename(root)
        assert name.startswith(f"graceshell-{os.getpid()}-") and len(name.rpartition("-")[2]) == 16
        info = os.lstat(root)
        assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700


def test_a_planted_symlink_is_never_followed(tmp_path, urandom_sequence):
    victim = tmp_path / "victim"
    victim.mkdir()
    token = b"\x01" * 8
    trap = predicted(tmp_path, token)
    trap.symlink_to(victim)
    urandom_sequence(token)
    root = rundir.create(str(tmp_path))
    assert root != str(trap)
    assert trap.is_symlink() and os.readlink(trap) == str(victim)
    assert list(victim.iterdir()) == []
    assert stat.S_IMODE(os.lstat(root).st_mode) == 0o700


def test_a_dangling_planted_symlink_is_not_followed_either(tmp_path, urandom_sequence):
    token = b"\x02" * 8
    trap = predicted(tmp_path, token)
    target = tmp_path / "would-be-created"
    trap.symlink_to(target)
    urandom_sequence(token)
    root = rundir.create(str(tmp_path))
    assert root != str(trap) and not target.exists()


def test_a_pre_created_directory_is_not_used(tmp_path, urandom_sequence):
    token = b"\x03" * 8
    planted = predicted(tmp_path, token)
    planted.mkdir(mode=0o777)
    (planted / "jobs").mkdir()
    urandom_sequence(token)
    root = rundir.create(str(tmp_path))
    assert root != str(planted)
    assert sorted(os.listdir(planted)) == ["jobs"]


def test_names_exhausted_is_an_error_not_a_reuse(tmp_path, urandom_sequence):
    token = b"\x04" * 8
    predicted(tmp_path, token).mkdir()
    urandom_sequence(*[token] * 10)
    with pytest.raises(OSError, match="cannot create a run directory"):
        rundir.create(str(tmp_path))


def run_true(tmp: Path) -> subprocess.CompletedProcess:
    """A run long enough for its sweep (supervisor.SWEEP_AFTER)."""
    return subprocess.run([sys.executable, "-m", "graceshell", "run", "--platform", "none", "--log-format", "json",
                           "--", "sleep", "1"], env=clean_env(TMPDIR=str(tmp)), capture_output=True, timeout=30)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def stale_dir(base: Path, pid: int, token: str = "00c0ffee00c0ffee") -> Path:
    root = base / f"graceshell-{pid}-{token}"
    (root / "jobs").mkdir(parents=True, mode=0o700)
    (root / "jobs" / "123-job.json").write_text('{"id": "job"}')
    (root / "shutdown.json").write_text("{}")
    old = time.time() - 60  # older than rundir.MIN_AGE
    os.utime(root, (old, old))
    return root


def test_a_new_graceshell_removes_run_directories_of_dead_graceshells(tmp_path):
    base = tmp_path / "tmp"
    base.mkdir()
    dead = stale_dir(base, dead_pid())
    reused = subprocess.Popen(["sleep", "30"])  # the dead graceshell's pid now belongs to something else
    try:
        taken = stale_dir(base, reused.pid)
        result = run_true(base)
    finally:
        reused.kill()
        reused.wait()
    assert result.returncode == 0, result.stderr
    assert not dead.exists() and not taken.exists()
    assert os.listdir(base) == []  # its own is gone at exit too
    assert b"graceshell.stale_run_dirs" in result.stderr


def test_the_sweep_keeps_live_runs_other_users_and_whatever_is_not_a_run_directory(tmp_path):
    base = tmp_path / "tmp"
    base.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    link = base / f"graceshell-{dead_pid()}-0badc0de0badc0de"
    link.symlink_to(outside)  # a symlink named like a stale run directory
    look_alike = base / "graceshell-notapid-1234"
    look_alike.mkdir()
    file_named_so = base / f"graceshell-{dead_pid()}-abcdef0123456789"
    file_named_so.write_text("a file")
    others = stale_dir(base, dead_pid(), token="0123456789abcdef")
    young = base / f"graceshell-{dead_pid()}-2222222222222222"  # may be between its mkdir and its lock
    young.mkdir()
    older_version = stale_dir(base, dead_pid(), token="deadbeef")  # held no lock: liveness unknowable
    if os.geteuid() == 0:
        os.chown(others, 65534, 65534)  # nobody's: never ours to remove
    # A live graceshell: its directory must survive another graceshell's sweep.
    log = tmp_path / "live.stderr"
    with open(log, "wb") as err:
        live = subprocess.Popen([sys.executable, "-m", "graceshell", "run", "--platform", "none", "--log-format",
                                 "json", "--", "sleep", "30"], env=clean_env(TMPDIR=str(base)), stderr=err,
                                start_new_session=True)
    try:
        wait_for(lambda: b"graceshell.start" in log.read_bytes(), 10, "the live graceshell to start")
        (live_dir,) = [p for p in base.iterdir() if p.name.startswith(f"graceshell-{live.pid}-")]
        result = run_true(base)
        assert result.returncode == 0, result.stderr
        assert live_dir.exists() and (live_dir / "jobs").is_dir()
    finally:
        os.killpg(live.pid, 15)
        live.wait(10)
    assert link.is_symlink() and (outside / "precious").read_text() == "keep me"
    assert look_alike.is_dir() and file_named_so.is_file() and young.is_dir() and older_version.is_dir()
    if os.geteuid() == 0:
        assert others.exists()


def test_a_locked_directory_is_kept_even_when_its_pid_looks_dead(tmp_path):
    """The lock, not the pid, is what proves an owner alive (pid namespaces, pid reuse)."""
    held = stale_dir(tmp_path, dead_pid(), token="1111111111111111")
    lock = rundir.claim(str(held))
    assert lock is not None
    try:
        assert rundir.sweep(str(tmp_path), keep="") == ([], None)
        assert held.exists()
    finally:
        os.close(lock)
    assert rundir.sweep(str(tmp_path), keep="") == ([str(held)], None)
    assert not held.exists()


def test_the_sweep_removes_links_inside_a_stale_directory_without_following_them(tmp_path):
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "precious").write_text("keep me")
    stale = stale_dir(tmp_path / "tmp", dead_pid(), token="3333333333333333")
    (stale / "jobs" / "to-a-dir").symlink_to(outside)
    (stale / "jobs" / "to-a-file").symlink_to(outside / "deep" / "precious")
    (stale / "left" / "by" / "a-worker").mkdir(parents=True)
    old = time.time() - 60
    os.utime(stale, (old, old))
    assert rundir.sweep(str(tmp_path / "tmp"), keep="") == ([str(stale)], None)
    assert not os.path.lexists(stale)
    assert (outside / "deep" / "precious").read_text() == "keep me"


def test_a_large_stale_directory_is_swept_in_batches_that_resume_where_they_ended(tmp_path):
    """The supervisor sweeps inside its loop: a batch is bounded, so a stop waits for one batch at most."""
    stale = stale_dir(tmp_path, dead_pid(), token="7777777777777777")
    for number in range(25):
        (stale / "jobs" / f"{number}.json").write_text("{}")
    old = time.time() - 60
    os.utime(stale, (old, old))
    assert rundir.sweep(str(tmp_path), keep="", batch=10) == ([], stale.name)
    os.utime(stale, None)  # a batch may touch the directory itself: resuming does not ask its age again
    assert rundir.sweep(str(tmp_path), keep="", resume=stale.name, batch=10) == ([], stale.name)
    assert rundir.sweep(str(tmp_path), keep="", resume=stale.name, batch=10) == ([str(stale)], None)
    assert not stale.exists()


def test_short_runs_and_stops_leave_the_sweep_to_others(tmp_path):
    base = tmp_path / "tmp"
    base.mkdir()
    stale = stale_dir(base, dead_pid(), token="5555555555555555")
    result = subprocess.run([sys.executable, "-m", "graceshell", "run", "--platform", "none", "--", "true"],
                            env=clean_env(TMPDIR=str(base)), capture_output=True, timeout=30)
    assert result.returncode == 0 and stale.exists()  # a run of `true` pays nothing for it
