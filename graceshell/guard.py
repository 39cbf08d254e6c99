"""The orphan guard: if graceshell dies without stopping its worker (kill -9,
the OOM killer), the worker gets its parent-death signal instead of running
on with no supervisor.

A guard is a child of graceshell, forked right after the worker has been
spawned (so it costs the worker's start nothing), that blocks on a pipe
whose only write end graceshell holds. When graceshell dies, however it
dies, the kernel closes that end, the guard's read returns end-of-file, and
the guard sends the signal to the worker through the worker's pidfd (never
to a recycled pid) and exits. When the worker exits first, graceshell kills
the guard with SIGKILL before anything else.

Why not prctl(PR_SET_PDEATHSIG) in the worker: it has to be set by the
worker itself between fork and exec, so graceshell would have to fork its
whole Python process instead of posix_spawn's vfork, which was measured to
delay the worker's exec by 1 to 5 ms; and the kernel clears it at the exec
of a set-user-ID program. The guard has neither cost.

The guard keeps every signal blocked (a stop broadcast to the process group
must not run graceshell's handlers in it), holds no descriptor but its two,
and is left out of every tree walk (tree.add_helper), so it is never
signalled, reported or waited for as part of the worker's tree.
"""

from __future__ import annotations

import os
import signal

from graceshell import tree

_PR_SET_NAME = 15
_NAME = b"graceshellguard"  # what ps and top show; 15 bytes is the most a name holds


class Guard:
    """graceshell's handle on its guard: the pid, and the pipe end whose close wakes it."""

    def __init__(self, pid: int, alive_fd: int) -> None:
        self.pid = pid
        self.alive_fd = alive_fd

    def stop(self) -> None:
        """Kill the guard and reap it, before the pipe's end is closed (which would wake it)."""
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)  # safe: only graceshell reaps it, so the pid is still its own
            except ProcessLookupError:
                pass
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.lost()
        if self.alive_fd >= 0:
            os.close(self.alive_fd)
            self.alive_fd = -1

    def lost(self) -> None:
        """The guard is gone (reaped here, or by the caller)."""
        tree.remove_helper(self.pid)
        self.pid = 0


def start(worker_pid: int, worker_pidfd: int | None, death_signal: int) -> Guard | None:
    """Fork a guard for `worker_pid`; None where none is needed or none can be made.

    As PID 1 of a pid namespace (a container) graceshell needs none: when
    PID 1 dies, the kernel kills every process in its namespace.
    """
    if os.getpid() == 1:
        return None
    read_fd, write_fd = os.pipe()  # close-on-exec; graceshell execs nothing that could inherit the end
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        pid = os.fork()
    except OSError:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(read_fd)
        os.close(write_fd)
        return None
    if pid == 0:  # the child keeps every signal blocked for good
        _watch(read_fd, write_fd, worker_pid, worker_pidfd, death_signal)  # never returns
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    os.close(read_fd)
    tree.add_helper(pid)
    return Guard(pid, write_fd)


def _watch(read_fd: int, write_fd: int, worker_pid: int, worker_pidfd: int | None, death_signal: int) -> None:
    """The guard's whole life: wait for graceshell's end, signal the worker, exit."""
    try:
        signal.set_wakeup_fd(-1)
        keep = sorted(fd for fd in (read_fd, worker_pidfd) if fd is not None)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # hold none of graceshell's output pipes open
            os.dup2(null, fd)
        start = 3
        for fd in keep:
            os.closerange(start, fd)
            start = fd + 1
        os.closerange(start, 1 << 20)  # close_range(2) on Linux: one system call
        _set_name()
        while os.read(read_fd, 1):
            pass  # nothing is ever written; end-of-file means graceshell is gone
        if worker_pidfd is not None:
            signal.pidfd_send_signal(worker_pidfd, death_signal)
        else:
            os.kill(worker_pid, death_signal)
    except BaseException:  # noqa: BLE001 - the guard must never return into graceshell's code
        pass
    finally:
        os._exit(0)


def _set_name() -> None:
    """`graceshellguard` in ps and top, instead of a second graceshell."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(_PR_SET_NAME, ctypes.c_char_p(_NAME), 0, 0, 0)
    except (OSError, AttributeError):
        pass
