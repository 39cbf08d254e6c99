"""Signal names as users write them (`TERM`, `SIGTERM`, `15`, `RTMIN+2`) and
the sets of signals graceshell handles."""

from __future__ import annotations

import signal

# Signals the kernel raises for a process's own fault: nobody sends them to
# ask a worker to do something, so none can start a stop.
FAULT_SIGNALS = frozenset(int(s) for s in (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE,
                                           signal.SIGTRAP, signal.SIGSYS))
# ...and with abort(3), the ones graceshell leaves at their defaults:
# catching them would hide a crash of its own.
_SYNCHRONOUS_FAULTS = FAULT_SIGNALS | {int(signal.SIGABRT)}
UNCATCHABLE = frozenset({int(signal.SIGKILL), int(signal.SIGSTOP)})

DEFAULT_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def forwardable_signals() -> frozenset[int]:
    """Signals graceshell catches and passes on: everything but the faults,
    the uncatchable ones, and SIGCHLD (which is graceshell's own business)."""
    return frozenset(
        int(s) for s in signal.valid_signals()
        if s not in _SYNCHRONOUS_FAULTS and s not in UNCATCHABLE and s != signal.SIGCHLD
    )


def wakeup_pipe() -> int:
    """A non-blocking pipe into which every caught signal writes its number
    (signal.set_wakeup_fd); returns the end to select on and read_signals.
    The entry point's pipe when it is recording (graceshell.early): the
    stop signals that came during start-up are waiting in it."""
    import os
    import sys

    early = sys.modules.get("graceshell.early")  # imported by the entry point only
    recorded = early.take_over() if early is not None else None
    if recorded is not None:
        return recorded

    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    return read_fd


def read_signals(fd: int) -> list[int]:
    """The signal numbers waiting in a wakeup pipe, in the order they came."""
    import os

    found: list[int] = []
    while True:
        try:
            data = os.read(fd, 512)
        except BlockingIOError:
            return found
        if not data:
            return found
        found.extend(data)


def signal_name(signum: int) -> str:
    """`TERM` for 15, `RTMIN+2` for a real-time signal, the number otherwise."""
    rtmin, rtmax = int(signal.SIGRTMIN), int(signal.SIGRTMAX)
    try:
        name = signal.Signals(signum).name
    except ValueError:
        if rtmin < signum < rtmax:
            return f"RTMIN+{signum - rtmin}"
        return str(signum)
    return name[3:]


def _known_names() -> dict[str, int]:
    names = {s.name[3:]: int(s) for s in signal.Signals if s.name.startswith("SIG")}
    # Aliases such as SIGIOT or SIGCLD share a number; keep the canonical name.
    return {n: v for n, v in names.items() if signal_name(v) == n}


def parse_signal(text: str | int) -> int:
    """The signal number for `text`; ValueError with a hint when unknown."""
    from graceshell.errors import shown

    if isinstance(text, bool) or not isinstance(text, (int, str)):
        raise ValueError(f"unknown signal {shown(text)}")
    if isinstance(text, int) or _is_number(text.strip()):
        if isinstance(text, str) and len(text.strip().lstrip("0")) > 3:  # int() of 5000 digits would raise
            raise ValueError(f"unknown signal number {shown(text.strip())}")
        number = int(text)
        if number not in {int(s) for s in signal.valid_signals()}:
            raise ValueError(f"unknown signal number {shown(number)}")
        return number
    spec = text.strip().upper()
    bare = spec[3:] if spec.startswith("SIG") else spec
    known = _known_names()
    if bare in known:
        return known[bare]
    for base, sign in (("RTMIN+", 1), ("RTMAX-", -1)):
        offset = bare[len(base):]
        if bare.startswith(base) and _is_number(offset) and len(offset.lstrip("0")) <= 3:
            anchor = signal.SIGRTMIN if sign > 0 else signal.SIGRTMAX
            number = int(anchor) + sign * int(offset)
            if int(signal.SIGRTMIN) <= number <= int(signal.SIGRTMAX):
                return number
    import difflib  # only on the error path

    close = difflib.get_close_matches(bare[:40], list(known), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else " (use e.g. TERM, SIGQUIT or 15)"
    raise ValueError(f"unknown signal {shown(text)}{hint}")


def _is_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²' and '٣', which int() refuses or misreads."""
    return text.isascii() and text.isdigit()
