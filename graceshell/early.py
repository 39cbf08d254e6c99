"""The entry point's first act: catch the stop signals before anything that can wait.

The kernel discards a signal that has no handler when it is sent to PID 1,
and graceshell is PID 1 in many containers. Until its handlers exist (after
click and its own modules are imported, tens of milliseconds on a loaded
machine) a `docker stop` would be lost, and the worker would run on until
the platform's SIGKILL. So the console script and `python -m graceshell`
start here, with only `os` and `signal` (already imported by Python itself):
importing this module catches the stop signals at once and writes them to a
wakeup pipe, and only then is the command line imported. What was recorded
is not lost:

- `run` and `start` take the pipe over (signals.wakeup_pipe): the stop is
  read by their event loop as if it had come a moment later;
- every other command gives the signals back (`release`): the handlers that
  were there before are restored and each recorded signal is raised again,
  so it acts as it would have (a TERM ends `check`, a Ctrl-C interrupts it).

What is left is Python's own start-up before this module runs.
"""

import os
import signal

# The default stop signals: the platforms' (TERM, Fly's INT) and Ctrl-C, Ctrl-\.
RECORDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)

_pipe: "tuple[int, int] | None" = None  # (read end, write end) while signals are recorded
_previous: "dict[int, object]" = {}


def _record(signum: int, frame: object) -> None:
    """The signal's number is in the wakeup pipe already (written by Python's C handler)."""


def record() -> None:
    """Catch the stop signals into a wakeup pipe (once; a no-op off the main thread)."""
    global _pipe
    if _pipe is not None:
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    try:
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:  # not the main thread: nothing to record
        os.close(read_fd)
        os.close(write_fd)
        return
    _pipe = (read_fd, write_fd)
    for signum in RECORDED:
        if signal.getsignal(signum) != signal.SIG_IGN:  # ignored (nohup, a parent's choice): nothing is lost
            _previous[signum] = signal.signal(signum, _record)


def take_over() -> "int | None":
    """The recording pipe's read end, for an event loop that goes on reading it
    (its signals still in it); None when nothing is being recorded. The
    caller installs its own handlers; the wakeup fd stays as it is."""
    global _pipe
    if _pipe is None:
        return None
    read_fd = _pipe[0]
    _pipe = None
    _previous.clear()
    return read_fd


def release() -> None:
    """Stop recording: restore the handlers from before, then raise each
    recorded signal again, so that it does what it would have done."""
    global _pipe
    if _pipe is None:
        return
    read_fd, write_fd = _pipe
    _pipe = None
    # Blocked while the pipe goes and the old handlers come back: one arriving
    # in between would run the recorder with nowhere to write. It waits, and
    # reaches the restored handler when unblocked.
    signal.pthread_sigmask(signal.SIG_BLOCK, RECORDED)
    try:
        signal.set_wakeup_fd(-1)
        for signum, handler in _previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, RECORDED)
    _previous.clear()
    recorded = b""
    while True:
        try:
            data = os.read(read_fd, 512)
        except BlockingIOError:
            break
        if not data:
            break
        recorded += data
    os.close(read_fd)
    os.close(write_fd)
    for signum in dict.fromkeys(recorded):  # once each, in the order they came
        if signum in RECORDED:
            signal.raise_signal(signum)


def main() -> None:
    """The console script's entry point (and `python -m graceshell`'s)."""
    from graceshell.cli import main as cli_main

    cli_main()


# On import, not in main(): the console script imports this module and calls
# main() a moment later, and that moment is no time to lose a stop. Nothing
# else imports it (signals and cli look for it in sys.modules).
record()
