"""graceshell's private run directory in $TMPDIR: made safely, owned for life,
and swept up by the next graceshell when its owner died without cleaning up.

The name is `graceshell-<pid>-<16 random hex digits>`: the random part (64
bits from os.urandom) cannot be predicted, and mkdir(2) fails on any
existing name, a planted directory or symlink included (it never follows a
symlink in the last component), so nobody can make graceshell use a
directory it did not create.

A kill -9 (the OOM killer's) leaves the directory behind. Every graceshell
holds an flock(2) on its own run directory, which the kernel drops when the
process dies however it dies; a new graceshell removes a directory of its
own user's whose lock is free, whose pid is gone or is no graceshell, and
which is at least MIN_AGE old (the lock covers pid reuse and other pid
namespaces sharing $TMPDIR; the age covers the moment between the mkdir and
the lock). The supervisor sweeps half a second into the run, so it never
delays the worker's start nor a short run; directories named otherwise (older versions,
which held no lock) are never touched.
"""

from __future__ import annotations

import os
import time

PREFIX = "graceshell-"
_TOKEN_DIGITS = 16  # hex digits of the random part; other names predate the lock and are left alone
_ATTEMPTS = 10
# A directory younger than this is never swept, whatever its lock says: it
# may be between its mkdir and its flock, in another pid namespace.
MIN_AGE = 10.0
# Entries one sweep removes before it hands the loop back: the supervisor
# sweeps inside its event loop, and a stop signal must not wait behind the
# 100,000 files a leaking worker left (about 10 ms a batch; one second all at once).
SWEEP_BATCH = 1000


def base_dir() -> str:
    return os.environ.get("TMPDIR") or "/tmp"


def create(base: str) -> str:
    """A new private directory (mode 0700) in `base`; OSError when none can be made."""
    for _ in range(_ATTEMPTS):
        root = os.path.join(base, f"{PREFIX}{os.getpid()}-{os.urandom(8).hex()}")
        try:
            os.mkdir(root, 0o700)  # EEXIST on anything already there, symlinks included
        except FileExistsError:
            continue
        made = os.lstat(root)
        # What mkdir made is ours; anything else means the base itself is not
        # safe (a directory others may rename entries in).
        if not _is_dir(made.st_mode) or made.st_uid != os.geteuid():
            raise OSError(f"{root}: the run directory was replaced after mkdir; is {base} world-writable "
                          "without the sticky bit?")
        return root
    raise OSError(f"cannot create a run directory in {base} (tried {_ATTEMPTS} names)")


def _is_dir(mode: int) -> bool:
    import stat

    return stat.S_ISDIR(mode)


def claim(root: str) -> int | None:
    """Hold an exclusive flock on `root` for as long as this process lives; its fd."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    if not _try_lock(fd):
        os.close(fd)
        return None
    return fd


def _try_lock(fd: int) -> bool:
    """flock(fd, LOCK_EX | LOCK_NB): True when this process now holds it."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: another process holds it
        return False
    return True


def _owner_pid(name: str) -> int | None:
    """The pid in `graceshell-<pid>-<hex>`, or None for any other name."""
    if not name.startswith(PREFIX):
        return None
    pid, sep, token = name[len(PREFIX):].partition("-")
    if not sep or not pid.isdigit() or len(token) != _TOKEN_DIGITS or token.strip("0123456789abcdef"):
        return None
    return int(pid)


def _graceshell_alive(pid: int) -> bool:
    """Is `pid` a live graceshell of this user's? A reused pid is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process now holds the pid
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"graceshell" in cmdline.read()
    except FileNotFoundError:
        return not os.path.isdir("/proc/self")  # gone just now, or no /proc to ask: assume alive
    except OSError:
        return True


def sweep(base: str, keep: str, resume: str | None = None,
          batch: int = SWEEP_BATCH) -> tuple[list[str], str | None]:
    """Remove run directories left by dead graceshells of this user, at most
    `batch` entries in all: the paths removed, and the name of a directory cut
    short, to be passed back as `resume` (its age is not checked again: the
    sweep itself has touched it).

    Everything goes through file descriptors and never follows a symlink:
    $TMPDIR is opened once, each candidate is opened with O_NOFOLLOW relative
    to it and checked by its fd, and its contents are removed through that
    fd (shutil is not imported: with its compression modules it costs
    milliseconds).
    """
    directory = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    removed: list[str] = []
    allowance = _Allowance(batch)
    try:
        base_fd = os.open(base, directory)
    except OSError:
        return removed, None
    try:
        with os.scandir(base_fd) as entries:
            names = [entry.name for entry in entries if _owner_pid(entry.name) is not None
                     and entry.is_dir(follow_symlinks=False)]
        uid, now = os.geteuid(), time.time()
        for name in names:
            if name == os.path.basename(keep):
                continue
            try:
                fd = os.open(name, directory | os.O_NOFOLLOW, dir_fd=base_fd)
            except OSError:
                continue  # gone, or a symlink put there since
            try:
                info = os.fstat(fd)
                if info.st_uid != uid or (name != resume and now - info.st_mtime < MIN_AGE):
                    continue
                if not _try_lock(fd):
                    continue  # its graceshell is alive and holds it
                if _graceshell_alive(_owner_pid(name)):  # type: ignore[arg-type]
                    continue  # belt and braces: never remove the directory of a graceshell we can see alive
                _remove_contents(fd, allowance)
                os.rmdir(name, dir_fd=base_fd)
                removed.append(os.path.join(base, name))
            except _BatchSpent:
                return removed, name
            except OSError:
                continue  # another graceshell swept it first, or something in it is not ours to remove
            finally:
                os.close(fd)
    finally:
        os.close(base_fd)
    return removed, None


def remove(path: str) -> None:
    """Remove a run directory and all in it, never following a symlink
    (best effort: what cannot be removed stays)."""
    directory = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, directory)
    except OSError:
        return
    try:
        _remove_contents(fd, _Allowance(float("inf")))
        os.rmdir(path)
    except OSError:
        pass
    finally:
        os.close(fd)


class _BatchSpent(Exception):
    """The sweep has removed its batch of entries; the rest waits for the next call."""


class _Allowance:
    """How many more entries this sweep may remove."""

    __slots__ = ("left",)

    def __init__(self, entries: float) -> None:
        self.left = entries

    def take(self) -> None:
        if self.left <= 0:
            raise _BatchSpent
        self.left -= 1


def _remove_contents(dir_fd: int, allowance: _Allowance) -> None:
    """Empty the directory open as `dir_fd`, subdirectories too, without
    following symlinks; _BatchSpent when `allowance` runs out first."""
    with os.scandir(dir_fd) as entries:
        names = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
    for name, is_dir in names:
        allowance.take()
        if is_dir:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                _remove_contents(fd, allowance)
            finally:
                os.close(fd)
            os.rmdir(name, dir_fd=dir_fd)
        else:
            os.unlink(name, dir_fd=dir_fd)
