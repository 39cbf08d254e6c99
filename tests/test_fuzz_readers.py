"""Property-based fuzzing of the files the integrations and graceshell read
from each other: the shutdown notice (read inside the worker) and the job
ledger (written by the worker, read at graceshell's exit). Whatever is in
them (huge, truncated, binary, symlinked, not JSON, JSON nested deep or
with numbers no float holds) the readers never raise, never hang, and
return data that logs and dumps as strict JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fuzz_support import count, examples
from graceshell import jobs, shutdown
from graceshell.engine.ledger import read_entries

# Log calls take these as their own arguments; a job's fields must not use them.
LOG_ARGUMENTS = {"self", "event", "level", "timestamp"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-(10**4000), 10**4000)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
FIELDS = ["id", "name", "pid", "started_at", "step", "deadline", "signal", "event", "self", "level", "timestamp",
          "file", "running_s", "requeued", "\udc80", ""]
json_objects = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), json_values, max_size=6)


def _as_json(value: Any, style: int) -> bytes:
    """`value` written the ways a writer might: Python's json (NaN allowed), cut short, padded."""
    try:
        text = json.dumps(value, ensure_ascii=bool(style & 1))
    except ValueError:  # an int too long for str()
        text = "{}"
    data = text.encode("utf-8", "surrogatepass")
    if style & 2:
        data = data[: len(data) // 2]  # half a write
    if style & 4:
        data = b"[" * 100_000 + data
    return data


contents = st.one_of(
    st.builds(_as_json, json_objects, st.integers(0, 7)),
    st.builds(_as_json, json_values, st.integers(0, 7)),
    st.binary(max_size=200),
    st.sampled_from([b"", b"{", b"{}", b"null", b"[]", b'{"step": 1e999}', b'{"deadline": NaN}',
                     b'{"deadline": Infinity, "step": 2}', b'{"deadline": ' + b"9" * 5000 + b"}",
                     b'{"deadline": ' + b"9" * 4000 + b"}", b'{"started_at": ' + b"9" * 4000 + b"}",
                     b'{"id": "\\udc80", "name": "\\ud800x"}', b'\xef\xbb\xbf{}', b'{"a": 1}\x00',
                     b'{"event": "x", "self": 1, "level": 2, "timestamp": 3}', b"{" * 50000]),
)
# What a path can be besides a file with those bytes.
SPECIAL = ["/dev/zero", "/dev/urandom", "fifo", "directory", "dangling", "loop", "missing", "huge", "unreadable"]


def _make(path: Path, kind: str | bytes) -> None:
    """Put `kind` at `path`: a regular file with those bytes, or one of SPECIAL."""
    if isinstance(kind, bytes):
        path.write_bytes(kind)
    elif kind.startswith("/dev/"):
        path.symlink_to(kind)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "dangling":
        path.symlink_to(path.with_name("nowhere"))
    elif kind == "loop":
        path.symlink_to(path)
    elif kind == "huge":
        path.write_bytes(b'{"id": "' + b"x" * (100 * 1024) + b'"}')  # over the 64 KiB a reader takes
    elif kind == "unreadable":
        path.write_bytes(b'{"step": 1}')
        path.chmod(0)


def _clear(directory: Path) -> None:
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            entry.rmdir()
        else:
            entry.unlink()


@pytest.fixture(scope="module")
def environment() -> dict[str, str]:
    saved = dict(os.environ)
    yield os.environ
    os.environ.clear()
    os.environ.update(saved)
    shutdown._escalated_notice = None


# -- the shutdown notice, inside the worker ----------------------------------------------------------

@examples(150)
@given(kind=contents | st.sampled_from(SPECIAL))
@example(kind="/dev/zero")
@example(kind="fifo")
def test_shutdown_notice(scratch: Path, environment: dict[str, str], kind: str | bytes) -> None:
    count("shutdown notice readers")
    _clear(scratch)
    path = scratch / "shutdown.json"
    if kind != "missing":
        _make(path, kind)
    environment[shutdown.SHUTDOWN_FILE_ENV] = str(path)
    shutdown._escalated_notice = None
    requested, escalated, remaining = shutdown.requested(), shutdown.escalated(), shutdown.remaining()
    notice = shutdown.notice()
    assert isinstance(requested, bool) and isinstance(escalated, bool)
    assert remaining is None or 0 <= remaining < float("inf")
    if notice is not None:
        json.dumps(notice, allow_nan=False).encode("utf-8")


# -- the job ledger, at graceshell's exit ----------------------------------------------------------------

names = st.sampled_from(["a.json", "b.json", "1-x.json", "job.json", ".hidden.json", "x.json.tmp", "\udcff.json",
                         "new\nline.json", "ü.json"]) | st.text(alphabet="abc-_.", min_size=1, max_size=6).map(
                             lambda n: n + ".json")


@examples(80)
@given(files=st.dictionaries(names, contents | st.sampled_from(SPECIAL), max_size=5))
def test_ledger_entries(scratch: Path, files: dict[str, str | bytes]) -> None:
    count("ledger entries at exit")
    _clear(scratch)
    made = 0
    for name, kind in files.items():
        path = scratch / os.fsdecode(os.fsencode(name))
        if kind == "missing":
            continue
        _make(path, kind)
        made += name.endswith(".json") and not name.startswith(".")
    entries, unread = read_entries(str(scratch), 1_000_000.0)
    assert len(entries) == made and unread == 0
    for entry in entries:
        assert not LOG_ARGUMENTS & set(entry), entry.keys()
        assert {"id", "name", "pid", "running_s", "file"} <= set(entry)
        assert entry["running_s"] is None or isinstance(entry["running_s"], float)
        json.dumps(entry, allow_nan=False).encode("utf-8")  # the exit report and every log format


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


def _cyclic() -> list[Any]:
    items: list[Any] = []
    items.append(items)
    return items


extras = st.dictionaries(
    st.sampled_from(["account", "args", "event", "note", "retries"]) | st.text(max_size=6).filter(str.isidentifier),
    json_values | st.sampled_from(["x" * 200_000, "\udc80", b"bytes", (1, 2), {(1, 2): 3}]) | st.builds(_cyclic)
    | st.builds(_Unprintable) | st.builds(lambda: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]),
    max_size=3)


@examples(100)
@given(job_id=st.text(max_size=30) | st.sampled_from(["..", "/etc/passwd", "a/b", "\0", "." * 300]),
       name=st.none() | st.text(max_size=10), extra=extras,
       update=st.dictionaries(st.sampled_from(["requeued", "note"]), json_values | st.builds(_cyclic), max_size=2),
       corrupt=st.none() | contents)
def test_jobs_track_and_update(scratch: Path, environment: dict[str, str], job_id: str, name: str | None,
                               extra: dict[str, Any], update: dict[str, Any], corrupt: bytes | None) -> None:
    """The worker side: tracking any job with any fields never fails the job, and
    what it writes graceshell can read."""
    count("jobs.track and jobs.update in the worker")
    _clear(scratch)
    environment[jobs.JOBS_DIR_ENV] = str(scratch)
    with jobs.track(job_id, name, **extra) as tracked:
        if corrupt is not None and tracked.path is not None:
            Path(tracked.path).write_bytes(corrupt)
        jobs.update(job_id, **update)
        entries, _ = read_entries(str(scratch), 1e9)
        assert len(entries) == 1
        if corrupt is None:
            assert entries[0]["id"] == job_id and entries[0]["name"] == name
        json.dumps(entries, allow_nan=False).encode("utf-8")
    assert read_entries(str(scratch), 1e9) == ([], 0)
