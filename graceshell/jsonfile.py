"""Reading a small JSON object from a file that another process wrote and
may have left corrupt: the job ledger's entries and the shutdown notice.

These readers run inside the user's worker (shutdown.escalated() in a
signal handler) and at graceshell's exit (the orphan report), so whatever
the file holds (half a write, a gigabyte, binary, a symlink to /dev/zero or
to a FIFO, JSON nested ten thousand deep) they never hang and never raise
anything but Unreadable, and what they return is safe to log and to dump
as JSON again.
"""

from __future__ import annotations

import errno
import os
import stat

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from typing import Any

MAX_DEPTH = 32  # JSON levels; a job entry has two or three


class Unreadable(Exception):
    """The file is missing, not a regular file, too large or not a JSON object; the message says which."""

    def __init__(self, reason: str, missing: bool = False) -> None:
        super().__init__(reason)
        self.missing = missing  # gone: e.g. a job that ended while its ledger was read


def read_object(path: str, limit: int) -> dict[str, Any]:
    """The JSON object in `path`, read with at most `limit` bytes; Unreadable otherwise."""
    return parse_object(read_bytes(path, limit))


def read_bytes(path: str, limit: int) -> bytes:
    """All of the regular file `path` when it holds at most `limit` bytes; Unreadable otherwise."""
    try:
        # NOFOLLOW: the writers only ever rename regular files into place;
        # NONBLOCK: opening a FIFO someone put there must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise Unreadable("a symbolic link, not followed" if exc.errno == errno.ELOOP else
                         (exc.strerror or str(exc)).lower(), missing=exc.errno == errno.ENOENT) from None
    except ValueError:  # a NUL in the path
        raise Unreadable("invalid file name") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Unreadable("not a regular file")
        if info.st_size > limit:
            raise Unreadable(f"larger than {limit} bytes")
        data = _read_at_most(fd, limit + 1)
    except OSError as exc:
        raise Unreadable((exc.strerror or str(exc)).lower()) from None
    finally:
        os.close(fd)
    if len(data) > limit:  # it grew after the fstat
        raise Unreadable(f"larger than {limit} bytes")
    return data


def parse_object(data: bytes) -> dict[str, Any]:
    """A JSON object from `data`: strict UTF-8, finite numbers, bounded depth; Unreadable otherwise."""
    import json

    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise Unreadable("not JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int() of 5000 digits
        raise Unreadable(f"not JSON: {exc}"[:200]) from None
    if not isinstance(value, dict):
        raise Unreadable("not a JSON object")
    return _clean(value, 0)


def finite_number(value: Any) -> float | None:
    """`value` as a float when it is a real, finite number (not a bool, not 10**400), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if number - number == 0 else None  # inf - inf and nan - nan are nan


def _read_at_most(fd: int, count: int) -> bytes:
    chunks, total = [], 0
    while total < count:
        chunk = os.read(fd, count - total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    number = float(text)
    if number - number != 0:
        raise ValueError(f"{text[:20]} is out of range")
    return number


def _clean(value: Any, depth: int) -> Any:
    """`value` with text that cannot be written as UTF-8 (a lone surrogate from
    a "\\udc80" escape) repaired, so that logging it cannot fail."""
    if depth > MAX_DEPTH:
        raise Unreadable(f"nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, str):
        if value.isascii():
            return value
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        return value
    if isinstance(value, dict):
        return {_clean(key, depth + 1): _clean(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [_clean(item, depth + 1) for item in value]
    return value
