"""Record the jobs a worker has in flight, so graceshell can report the ones
a forced stop orphaned.

    from graceshell import jobs

    with jobs.track(job_id, "reports.build", account=42):
        build_report()

    @jobs.track(name="emails.send")      # a new id for every call
    def send(...): ...

The protocol is language-neutral: one small JSON file per job in
$GRACESHELL_JOBS_DIR, written atomically (a dot-name first, then a rename)
when the job starts and removed when it ends. Outside graceshell (no
$GRACESHELL_JOBS_DIR) `track` does nothing. Importing this module is cheap
and has no side effects.

The integrations, which see every job a framework runs, use
`track_deferred`: the same file, written only for a job still running
0.2 s after its start (see graceshell.jobwriter), so that short jobs cost
no system call.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType
    from typing import Any

JOBS_DIR_ENV = "GRACESHELL_JOBS_DIR"
# An entry is a few hundred bytes; graceshell reads at most this much of one.
MAX_ENTRY = 64 * 1024
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def ledger_dir() -> str | None:
    """The job ledger of the graceshell running this process, or None."""
    return os.environ.get(JOBS_DIR_ENV) or None


def _file_name(job_id: str) -> str:
    # Ids are nearly always safe already (uuids, hex): one set test, not a loop over the characters.
    safe = job_id if _SAFE.issuperset(job_id) else "".join(c if c in _SAFE else "_" for c in job_id)
    return f"{os.getpid()}-{safe[:100].lstrip('.') or 'job'}.json"


def write_entry(directory: str, entry: dict[str, Any]) -> str:
    """Write one ledger entry atomically; returns its path.

    Raises OSError only: fields that JSON cannot hold (a cycle, a tuple key)
    or that make the entry larger than graceshell reads are left out, and
    the entry says so.
    """
    path = f"{directory}/{_file_name(str(entry['id']))}"
    _write_atomically(path, _encode(entry))
    return path


# The types whose JSON graceshell's reader always takes back as they were
# (text, bounded numbers, true/false/null): an entry of those alone needs no
# re-parse to prove it readable. Exact types: a subclass may encode otherwise.
_PLAIN_TYPES = frozenset({str, int, float, bool, type(None)})
_plain_encoder: Any = None  # json.JSONEncoder(allow_nan=False), built at the first entry


def _encode_plain(entry: dict[str, Any]) -> bytes | None:
    """The common entry, flat and of plain fields, encoded without the
    validating re-parse; None when it is not such an entry."""
    global _plain_encoder
    for key, value in entry.items():
        if type(key) is not str or type(value) not in _PLAIN_TYPES:
            return None
    if _plain_encoder is None:
        import json

        _plain_encoder = json.JSONEncoder(allow_nan=False)  # ensure_ascii: the bytes are ASCII
    try:
        data: bytes = _plain_encoder.encode(entry).encode("ascii")
    except ValueError:  # NaN or infinity, an int of thousands of digits: the careful path says why
        return None
    return data if len(data) <= MAX_ENTRY else None


def _encode(entry: dict[str, Any]) -> bytes:
    """The entry as graceshell will read it back (jsonfile.parse_object), whatever its extra fields hold."""
    plain = _encode_plain(entry)
    if plain is not None:
        return plain
    import json

    from graceshell.jsonfile import Unreadable, parse_object

    try:
        data = json.dumps(entry, default=str, allow_nan=False).encode("utf-8", "backslashreplace")
        if len(data) > MAX_ENTRY:
            raise Unreadable(f"larger than {MAX_ENTRY} bytes")
        parse_object(data)  # nested too deep, or a number the reader refuses
        return data
    except Exception as exc:  # noqa: BLE001 - a cycle, a tuple key, a __str__ that raises: never the job's failure
        reason = f"extra fields left out: {exc}"[:200]
    core = {key: _plain(entry.get(key)) for key in ("id", "name", "pid", "started_at")}
    return json.dumps({**core, "note": reason}).encode("ascii")


def _plain(value: Any) -> Any:
    """`value` as JSON and graceshell's reader take it: a number or short text."""
    from graceshell.jsonfile import finite_number

    if value is None or isinstance(value, bool) or (finite_number(value) is not None and abs(value) < 2**63):
        return value
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:  # noqa: BLE001 - a __str__ that raises
        text = f"<{type(value).__name__}>"
    return text[:1000]


def _write_atomically(path: str, data: bytes) -> None:
    head, tail = os.path.split(path)
    temp = f"{head}/.{tail}.tmp"
    try:
        # os.open, not open(): no buffer object, no fstat, ioctl and lseek (a job's ledger write is on its path).
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            if os.write(fd, data) != len(data):
                raise OSError(f"short write to {temp}")
        finally:
            os.close(fd)
        os.replace(temp, path)
    except OSError:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise


def _entries_of(job_id: str) -> list[str]:
    """Paths of the ledger files of `job_id`, whichever process wrote them."""
    directory = ledger_dir()
    if directory is None:
        return []
    suffix = _file_name(job_id).partition("-")[2]
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return [os.path.join(directory, name) for name in names if name.partition("-")[2] == suffix]


def update(job_id: str, **fields: Any) -> None:
    """Add `fields` to the ledger entry of `job_id` (e.g. requeued=True), from any process."""
    import sys

    late = sys.modules.get("graceshell.jobwriter")  # loaded by the first track_deferred
    if late is not None and late.write_now(job_id, fields):
        return  # a job of this process's: its entry is written now, fields and all
    from graceshell.jsonfile import Unreadable, read_object

    for path in _entries_of(job_id):
        try:
            entry = read_object(path, MAX_ENTRY)
        except Unreadable:
            continue  # not ours to repair: graceshell reports it as it is
        try:
            _write_atomically(path, _encode({**entry, **fields}))
        except OSError:
            pass


def forget(job_id: str) -> None:
    """Remove the ledger entry of `job_id`, whichever process wrote it
    (for frameworks that learn of a job's end in another process)."""
    import sys

    late = sys.modules.get("graceshell.jobwriter")
    if late is not None:
        late.forget(job_id)
    for path in _entries_of(job_id):
        try:
            os.unlink(path)
        except OSError:
            pass


class track:  # noqa: N801 - used like a function: `with jobs.track(...)`
    """Context manager and decorator recording one job in the ledger."""

    def __init__(self, id: str | None = None, name: str | None = None, **extra: Any) -> None:  # noqa: A002
        self.id = id
        self.name = name
        self.extra = extra
        self.path: str | None = None

    def __enter__(self) -> track:
        directory = ledger_dir()
        if directory is None:
            return self
        try:
            self.path = write_entry(directory, self._entry())
        except OSError:
            self.path = None  # the ledger is a report, never a reason for a job to fail
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.path is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            self.path = None

    def _entry(self) -> dict[str, Any]:
        """The job's entry as it starts (a new id when none was given)."""
        if self.id is None:
            self.id = os.urandom(8).hex()
        return {"id": self.id, "name": self.name, "pid": os.getpid(), "started_at": time.time(), **self.extra}

    def __call__(self, function: Callable[..., Any]) -> Callable[..., Any]:
        import functools

        name = self.name or f"{function.__module__}.{function.__qualname__}"
        fixed_id, extra = self.id, self.extra

        @functools.wraps(function)
        def tracked(*args: Any, **kwargs: Any) -> Any:
            with track(fixed_id, name, **extra):
                return function(*args, **kwargs)

        return tracked


class track_deferred(track):  # noqa: N801
    """`track` for the integrations, on every job a framework runs: the entry
    is written only if the job is still running after jobwriter.WRITE_AFTER
    (0.2 s), or at once when `update` names it. A job that ends sooner costs
    a few microseconds and no system call. `path` is None until written."""

    _late: Any = None  # the jobwriter module, imported at the first job

    def __enter__(self) -> track_deferred:
        directory = ledger_dir()
        if directory is None:
            return self
        late = track_deferred._late
        if late is None:
            from graceshell import jobwriter as late

            track_deferred._late = late
        self.pending = late.start(directory, self._entry())
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        pending = getattr(self, "pending", None)
        if pending is not None:
            self.pending = None
            track_deferred._late.finish(pending)

    @property
    def path(self) -> str | None:  # type: ignore[override]
        pending = getattr(self, "pending", None)
        return pending.path if pending is not None and pending.written else None

    @path.setter
    def path(self, value: str | None) -> None:
        pass  # track.__init__ sets it; the pending job knows its own
