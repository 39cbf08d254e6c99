"""Ledger entries written late, for the integrations: only for a job still
running WRITE_AFTER seconds after it started (or at once when jobs.update
names it: the cold step marking it interrupted).

Most jobs are short (an email, a counter): writing, renaming and removing a
file for each costs more than the job. Here the job's start is a note in
memory; a thread of the worker process writes the entries of the jobs that
outlive WRITE_AFTER, and a job that ends first leaves no trace in the file
system. What the ledger is for holds: a job in flight at a stop is still
running seconds later, when graceshell's cold step or kill comes, so its
entry is there to be reported; `graceshell.busy` comes within a second of a
long job's start. Only a process that dies (a crash, a SIGKILL) within
WRITE_AFTER of a job's start leaves that job out.

The thread sleeps until the next entry is due, and waits without a timeout
once no entry has been waiting for PARK_AFTER. Forked children (prefork pools, work
horses) start their own thread at their first job.
"""

from __future__ import annotations

import os
import threading
import time

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from typing import Any

WRITE_AFTER = 0.2  # seconds a job runs before its entry is written
PARK_AFTER = 5.0  # seconds with no entry to write before the thread waits for the next job without a timeout


class Pending:
    """One job in flight whose entry may not be written yet."""

    __slots__ = ("directory", "entry", "due", "path", "written")

    def __init__(self, directory: str, entry: dict[str, Any], due: float) -> None:
        self.directory = directory
        self.entry = entry
        self.due = due
        self.path: str | None = None
        self.written = False


# The jobs of this process in flight. Set operations are atomic under the GIL:
# the job's own thread adds and discards without a lock (the hot path);
# writes, from the writer thread or jobs.update, hold _write_lock (an RLock:
# jobs.update may run in a signal handler that interrupted another update).
_pending: set[Pending] = set()
_write_lock = threading.RLock()
_writer: _Writer | None = None


def start(directory: str, entry: dict[str, Any]) -> Pending:
    job = Pending(directory, entry, time.monotonic() + WRITE_AFTER)
    _pending.add(job)
    writer = _writer
    if writer is None:
        _start_writer()
    elif writer.parked:
        writer.wake.set()
    return job


def finish(job: Pending) -> None:
    """The job ended: it leaves the ledger (if it was ever written)."""
    _pending.discard(job)
    if job.written:  # else the writer, seeing it gone after its write, removes the file itself
        _unlink(job.path)


def write_now(job_id: str, fields: dict[str, Any]) -> bool:
    """Add `fields` to this process's job `job_id` and write its entry now; False when it is not ours."""
    for job in list(_pending):
        if str(job.entry.get("id")) == job_id:
            with _write_lock:
                job.entry = {**job.entry, **fields}
                _write(job)
            return True
    return False


def pending_ids() -> list[str]:
    return [str(job.entry.get("id")) for job in list(_pending)]


def forget(job_id: str) -> None:
    for job in list(_pending):
        if str(job.entry.get("id")) == job_id:
            finish(job)


def _write(job: Pending) -> None:
    """Write `job`'s entry while it is in flight (under _write_lock)."""
    from graceshell.jobs import write_entry

    if job not in _pending:
        return
    try:
        job.path = write_entry(job.directory, job.entry)
    except OSError:
        return  # the ledger is a report, never a reason for a job to fail
    job.written = True
    if job not in _pending:  # it ended during the write, before it saw `written`
        _unlink(job.path)


def _unlink(path: str | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass


class _Writer:
    def __init__(self) -> None:
        self.wake = threading.Event()
        self.parked = False

    def run(self) -> None:
        idle_since = time.monotonic()
        while True:
            now = time.monotonic()
            waiting = [job for job in list(_pending) if not job.written]
            for job in waiting:
                if job.due <= now:
                    with _write_lock:
                        if not job.written:
                            _write(job)
            later = [job.due for job in waiting if job.due > now]
            if waiting:  # a long job already written needs nothing more of this thread
                idle_since = now
            if later:
                time.sleep(min(later) - now)
            elif now - idle_since < PARK_AFTER:
                time.sleep(WRITE_AFTER)  # a job that starts now is due then
            else:
                self._park()
                idle_since = time.monotonic()

    def _park(self) -> None:
        self.parked = True
        # Checked after `parked` is set: a job started meanwhile either saw it set, or is seen here.
        if all(job.written for job in list(_pending)):
            self.wake.wait()
        self.wake.clear()
        self.parked = False


def _start_writer() -> None:
    global _writer
    writer = _writer = _Writer()
    threading.Thread(target=writer.run, name="graceshell-ledger", daemon=True).start()


def _in_child() -> None:
    """After a fork: the parent's jobs and thread are not this process's."""
    global _writer, _write_lock
    _pending.clear()
    _writer = None
    _write_lock = threading.RLock()


os.register_at_fork(after_in_child=_in_child)
