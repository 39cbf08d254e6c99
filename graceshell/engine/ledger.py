"""graceshell's side of the job ledger: the private run directory, the
shutdown notice, busy-state watching, and reading what jobs were left.

Layout, created for every run and removed at exit:

    graceshell-<pid>-<random>/        0700, made and swept up by graceshell.rundir
        jobs/                         $GRACESHELL_JOBS_DIR: one <...>.json per job in flight
        shutdown.json                 $GRACESHELL_SHUTDOWN_FILE: written at the first stop signal

The worker also gets $GRACESHELL_BUDGET_S, the seconds from the first stop
signal to graceshell's final KILL, for integrations that must size a
framework's own shutdown timeout before any stop (Sidekiq's).

Dot-files in jobs/ are writes in progress and are never read.
"""

from __future__ import annotations

import os
import sys

from graceshell.jobs import JOBS_DIR_ENV
from graceshell.shutdown import SHUTDOWN_FILE_ENV

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from typing import Any

BUDGET_ENV = "GRACESHELL_BUDGET_S"
# What graceshell reads of the ledger at exit. A worker that leaks ledger
# files (or a hostile one) must not delay the exit report past the
# platform's SIGKILL, nor make it a line of many megabytes: 20,000 entries
# took 6.5 s and a 12 MB log. Gevent and eventlet pools do run a thousand
# jobs at once, so all of those are still named; the rest are counted.
MAX_ORPHANS_READ = 1000
MAX_ORPHAN_BYTES = 4 * 1024 * 1024
# inotify(7) events that change the set of files in a directory.
_IN_CREATE, _IN_DELETE, _IN_MOVED_FROM, _IN_MOVED_TO = 0x100, 0x200, 0x40, 0x80
_IN_Q_OVERFLOW = 0x4000  # events were lost: anything may have changed
_EVENT_HEADER = 16  # struct inotify_event: int wd; uint32 mask, cookie, len; then len bytes of name


def entry_names(jobs_dir: str, ordered: bool = True) -> list[str]:
    """The ledger's job files, by name unless `ordered` is False; dot-files are writes in progress."""
    try:
        names = [n for n in os.listdir(jobs_dir) if n.endswith(".json") and not n.startswith(".")]
    except OSError:
        return []
    return sorted(names) if ordered else names


def oldest_entry_time(jobs_dir: str, limit: int = MAX_ORPHANS_READ) -> float | None:
    """When the oldest job in flight started, looking at most at `limit`
    files; None when there is none. It is the entry's modification time: the
    entry is written at the job's start and again only by a rare
    jobs.update(), and a stat is cheap where parsing every entry on each
    /busy would not be."""
    oldest = None
    try:
        with os.scandir(jobs_dir) as entries:
            for index, entry in enumerate(entries):
                if index >= limit:
                    break
                if entry.name.startswith(".") or not entry.name.endswith(".json"):
                    continue
                try:
                    mtime = entry.stat(follow_symlinks=False).st_mtime
                except OSError:
                    continue  # the job ended meanwhile
                oldest = mtime if oldest is None else min(oldest, mtime)
    except OSError:
        return None
    return oldest


def read_entries(jobs_dir: str, now: float) -> tuple[list[dict[str, Any]], int]:
    """The job files left in `jobs_dir`: one entry for each read (its id,
    name, pid, running_s and all it holds), and how many more were left unread.

    A corrupt, half-written, huge or symlinked file is reported as such,
    never raised, and at most MAX_ENTRY bytes of it are read: the worker
    wrote these files, graceshell must still exit with its report. At most
    MAX_ORPHANS_READ files, or MAX_ORPHAN_BYTES in all, are read.
    """
    from graceshell.jobs import MAX_ENTRY
    from graceshell.jsonfile import Unreadable, finite_number, parse_object, read_bytes
    from graceshell.logs import RESERVED_KEYS

    found: list[dict[str, Any]] = []
    names = entry_names(jobs_dir)
    bytes_read = 0
    for index, name in enumerate(names):
        if len(found) >= MAX_ORPHANS_READ or bytes_read >= MAX_ORPHAN_BYTES:
            return found, len(names) - index
        shown_name = os.fsencode(name).decode("utf-8", "backslashreplace")  # a name in no encoding
        try:
            raw = read_bytes(os.path.join(jobs_dir, name), MAX_ENTRY)
            bytes_read += len(raw)
            data = parse_object(raw)
        except Unreadable as exc:
            if exc.missing:
                continue  # the job ended while the ledger was read
            found.append({"id": None, "name": None, "pid": None, "running_s": None, "file": shown_name,
                          "error": f"corrupt ledger file: {exc}"[:300]})
            continue
        started = finite_number(data.get("started_at"))
        running = round(now - started, 3) if started is not None else None
        # The job's own fields are reported too, renamed off the keys the log
        # event itself uses (`event` would even break the log call).
        extra = {(f"job_{key}" if key in RESERVED_KEYS else key): value for key, value in data.items()}
        found.append({"id": data.get("id"), "name": data.get("name"), "pid": data.get("pid"), **extra,
                      "running_s": running, "file": shown_name})
    return found, 0


def drain(watch_fd: int) -> bool:
    """Read all that a watch_directory fd holds; True when an event was about
    a job's file, False when only writes in progress (dot-files) moved."""
    changed = False
    while True:
        try:
            data = os.read(watch_fd, 65536)
        except OSError:  # BlockingIOError: drained
            return changed
        if not data:
            return changed
        changed = changed or _names_a_job(data)


def _names_a_job(events: bytes) -> bool:
    """Does any of these inotify(7) events name a file that is not a dot-file
    (or say the queue overflowed)? Stops at the first that does: after a
    job's temporary file comes its rename, so that is the second or third."""
    offset = 0
    while offset + _EVENT_HEADER <= len(events):
        mask = int.from_bytes(events[offset + 4:offset + 8], sys.byteorder)
        length = int.from_bytes(events[offset + 12:offset + 16], sys.byteorder)
        if mask & _IN_Q_OVERFLOW or events[offset + _EVENT_HEADER:offset + _EVENT_HEADER + 1] != b".":
            return True
        offset += _EVENT_HEADER + length
    return False


def watch_directory(path: str) -> int | None:
    """A non-blocking inotify fd, readable when a file appears in `path`, leaves
    it or is renamed in or out (Linux); None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    from graceshell.engine.tree import libc

    fd = libc().inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        return None
    if libc().inotify_add_watch(fd, path.encode(), _IN_CREATE | _IN_DELETE | _IN_MOVED_FROM | _IN_MOVED_TO) < 0:
        os.close(fd)
        return None
    return fd


class Ledger:
    def __init__(self) -> None:
        from graceshell.engine import rundir

        root = rundir.create(rundir.base_dir())
        self.root = root
        self.lock_fd: int | None = None  # see claim
        self.jobs_dir = os.path.join(root, "jobs")
        os.mkdir(self.jobs_dir, 0o700)
        self.shutdown_file = os.path.join(root, "shutdown.json")
        self.watch_fd: int | None = None
        self.notice_fd: int | None = None  # the next notice's temporary file, opened ahead

    def claim(self) -> None:
        """Lock the run directory until it is gone: the lock proves this run
        alive to other graceshells' sweeps. Taken once the worker runs: a
        directory younger than rundir.MIN_AGE is never swept anyway."""
        from graceshell.engine import rundir

        self.lock_fd = rundir.claim(self.root)

    def sweep_stale(self, resume: str | None = None) -> tuple[list[str], str | None]:
        """Remove the run directories of graceshells that died without cleaning
        up (a kill -9), one batch at a time: see rundir.sweep. Called once the
        worker is running."""
        from graceshell.engine import rundir

        return rundir.sweep(os.path.dirname(self.root), keep=self.root, resume=resume)

    def environment(self, budget: float | None = None) -> dict[str, str]:
        env = {JOBS_DIR_ENV: self.jobs_dir, SHUTDOWN_FILE_ENV: self.shutdown_file}
        if budget is not None:
            env[BUDGET_ENV] = f"{budget:g}"
        return env

    def prepare_notice(self) -> None:
        """Open the next notice's temporary file ahead of need, so that at a
        stop, with the worker waiting for its signal, writing the notice is
        one write and one rename."""
        if self.notice_fd is None:
            self.notice_fd = os.open(self.shutdown_file + ".tmp",
                                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)

    def write_notice(self, notice: dict[str, Any]) -> None:
        """The shutdown notice, atomically: readers see all of it or nothing."""
        import json  # loaded long before any stop (structlog's renderers import it): a lookup, not an import

        self.prepare_notice()
        fd, self.notice_fd = self.notice_fd, None
        assert fd is not None
        try:
            os.write(fd, json.dumps(notice).encode())
            os.rename(self.shutdown_file + ".tmp", self.shutdown_file)
        finally:
            os.close(fd)

    def count(self) -> int:
        return len(entry_names(self.jobs_dir, ordered=False))  # on every inotify wake: no sort

    def oldest_start(self) -> float | None:
        return oldest_entry_time(self.jobs_dir)

    def entries(self, now: float) -> tuple[list[dict[str, Any]], int]:
        return read_entries(self.jobs_dir, now)

    def watch(self) -> int | None:
        """An inotify fd that becomes readable when a job starts or ends (Linux)."""
        self.watch_fd = watch_directory(self.jobs_dir)
        return self.watch_fd

    def drain_watch(self) -> bool:
        """Empty the watch; True when a job's file came or went since the last drain."""
        return drain(self.watch_fd) if self.watch_fd is not None else False

    def remove(self) -> None:
        for fd in (self.watch_fd, self.notice_fd):
            if fd is not None:
                os.close(fd)
        self.watch_fd = self.notice_fd = None
        from graceshell.engine import rundir

        try:
            rundir.remove(self.root)
        finally:
            if self.lock_fd is not None:  # held until the directory is gone
                os.close(self.lock_fd)
                self.lock_fd = None
