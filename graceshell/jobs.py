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
    safe = "".join(c if c in _SAFE else "_" for c in job_id)[:100].lstrip(".") or "job"
    return f"{os.getpid()}-{safe}.json"


def write_entry(directory: str, entry: dict[str, Any]) -> str:
    """Write one ledger entry atomically; returns its path.

    Raises OSError only: fields that JSON cannot hold (a cycle, a tuple key)
    or that make the entry larger than graceshell reads are left out, and
    the entry says so.
    """
    path = os.path.join(directory, _file_name(str(entry["id"])))
    _write_atomically(path, _encode(entry))
    return path


def _encode(entry: dict[str, Any]) -> bytes:
    """The entry as graceshell will read it back (jsonfile.parse_object), whatever its extra fields hold."""
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
    temp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
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
        if self.id is None:
            self.id = os.urandom(8).hex()
        entry = {"id": self.id, "name": self.name, "pid": os.getpid(), "started_at": time.time(), **self.extra}
        try:
            self.path = write_entry(directory, entry)
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

    def __call__(self, function: Callable[..., Any]) -> Callable[..., Any]:
        import functools

        name = self.name or f"{function.__module__}.{function.__qualname__}"
        fixed_id, extra = self.id, self.extra

        @functools.wraps(function)
        def tracked(*args: Any, **kwargs: Any) -> Any:
            with track(fixed_id, name, **extra):
                return function(*args, **kwargs)

        return tracked
