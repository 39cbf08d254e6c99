"""The orphan guard: if graceshell dies without stopping its worker (kill -9,
the OOM killer), the worker gets its parent-death signal instead of running
on with no supervisor.

A guard is a small child of graceshell, started right after the worker has
been spawned (so it costs the worker's start nothing), that blocks reading a
pipe whose only write end graceshell holds. When graceshell dies, however it
dies, the kernel closes that end, the guard's read returns end-of-file, and
the guard signals the worker and exits. When the worker exits first,
graceshell kills the guard with SIGKILL before anything else.

The guard is /bin/sh running a one-line script, started with posix_spawn
(no copy of graceshell's memory; about 0.1 MB of its own): before it
signals, it checks that the worker's pid still has the worker's start time
(/proc/PID/stat), so that a pid recycled after the worker is gone is not
signalled. Where there is no /bin/sh (distroless images), graceshell forks
itself instead and the guard signals through the worker's pidfd; that copy
of graceshell's memory grows as graceshell writes to its own pages
(copy-on-write), to a few MB.

Why not prctl(PR_SET_PDEATHSIG) in the worker: it has to be set by the
worker itself between fork and exec, so graceshell would have to fork its
whole Python process instead of posix_spawn's vfork, which was measured to
delay the worker's exec by 1 to 5 ms; and the kernel clears it at the exec
of a set-user-ID program. The guard has neither cost.

The guard keeps every signal blocked (a stop broadcast to the process group
must not reach it), holds no descriptor of graceshell's but its pipe, and is
left out of every tree walk (tree.add_helper), so it is never signalled,
reported or waited for as part of the worker's tree.
"""

from __future__ import annotations

import os
import signal

from graceshell.engine import tree

NAME = "graceshellguard"  # the guard's argv[0] (and, forked, its name in ps and top)
_PR_SET_NAME = 15
_SHELL = "/bin/sh"
# $1 signal number, $2 the worker's pid, $3 its start time in clock ticks
# (field 22 of /proc/PID/stat; the fields after the command's closing paren
# start at field 3, so it is the 20th of them).
_SCRIPT = ('sig=$1 pid=$2 start=$3; read _; '
           'if [ -n "$start" ] && [ -d /proc/self ]; then '
           'read -r stat < "/proc/$pid/stat" || exit 0; set -- ${stat##*) }; [ "${20}" = "$start" ] || exit 0; '
           'fi; kill -$sig $pid')


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
    """Start a guard for `worker_pid`; None where none is needed or none can be made.

    As PID 1 of a pid namespace (a container) graceshell needs none: when
    PID 1 dies, the kernel kills every process in its namespace.
    """
    if os.getpid() == 1:
        return None
    read_fd, write_fd = os.pipe()  # close-on-exec: the worker and hooks never hold the end
    try:
        if os.path.exists(_SHELL):
            pid = _spawn_shell(read_fd, worker_pid, death_signal)
        else:
            pid = _fork(read_fd, write_fd, worker_pid, worker_pidfd, death_signal)
    except OSError:
        os.close(write_fd)
        return None
    finally:
        os.close(read_fd)
    tree.add_helper(pid)
    return Guard(pid, write_fd)


def _spawn_shell(read_fd: int, worker_pid: int, death_signal: int) -> int:
    started = tree.start_ticks(worker_pid)
    argv = [NAME, "-c", _SCRIPT, NAME, str(death_signal), str(worker_pid), "" if started is None else str(started)]
    return os.posix_spawn(_SHELL, argv, {"PATH": os.defpath},
                          file_actions=[(os.POSIX_SPAWN_DUP2, read_fd, 0),
                                        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                                        (os.POSIX_SPAWN_DUP2, 1, 2)],
                          setsigmask=signal.valid_signals())


def _fork(read_fd: int, write_fd: int, worker_pid: int, worker_pidfd: int | None, death_signal: int) -> int:
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        pid = os.fork()
        if pid == 0:  # the child keeps every signal blocked for good
            _watch(read_fd, write_fd, worker_pid, worker_pidfd, death_signal)  # never returns
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return pid


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
    """The forked guard as `graceshellguard` in ps and top, instead of a second graceshell."""
    try:
        import ctypes

        from graceshell.engine.tree import libc

        libc().prctl(_PR_SET_NAME, ctypes.c_char_p(NAME.encode()), 0, 0, 0)
    except (OSError, AttributeError):
        pass
