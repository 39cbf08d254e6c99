"""graceshell's process tree: subreaping, finding every descendant, killing it.

As a child subreaper (Linux PR_SET_CHILD_SUBREAPER) graceshell becomes the
parent of every orphan its worker leaves behind, daemons that called setsid
and double-forked included. Its own descendants are therefore the whole
tree: nothing the worker started can hide in another session or group.
psutil is imported only when a tree has to be signalled.
"""

from __future__ import annotations

import os
import signal
import sys
import time

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from typing import Any

PR_SET_CHILD_SUBREAPER = 36
# graceshell's own helper processes (the orphan guard): children of
# graceshell, but never part of the worker's tree, never signalled or reported.
_HELPERS: set[int] = set()
# Rounds of "find the living, kill them" before giving up: each round catches
# children forked between the previous scan and its kill.
_KILL_ROUNDS = 20
_libc: Any = None  # see libc()


def libc() -> Any:
    """The C library through ctypes, for the calls the os module lacks (prctl,
    inotify); loaded once."""
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc



def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux only); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    return libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def spawn_worker(argv: list[str], env: dict[str, str], reset: frozenset[int]) -> int:
    """Start the worker in a new session, its own process group, and return its pid.

    posix_spawnp resets the signals graceshell catches to their defaults in
    the child before exec (glibc does it with every signal blocked, so no
    handler of ours can run in the child), and reports exec errors
    (ENOENT, EACCES) to us as OSError.
    """
    return os.posix_spawnp(argv[0], argv, env, setsid=True, setsigdef=reset)


def add_helper(pid: int) -> None:
    _HELPERS.add(pid)


def remove_helper(pid: int) -> None:
    _HELPERS.discard(pid)


def _proc_path_available() -> bool:
    """Can the tree be walked in /proc and signalled through pidfds (Linux 5.3+)?"""
    me = os.getpid()
    return hasattr(os, "pidfd_open") and os.path.exists(f"/proc/{me}/task/{me}/children")


def warm_up() -> None:
    """Import psutil ahead of need where a kill will need it (no /proc children
    files or pidfds), so that the kill is not late by its import."""
    if not _proc_path_available():
        import psutil  # noqa: F401


def _age_linux(pid: int) -> float | None:
    """Seconds since `pid` started, to the clock tick.

    psutil's create_time adds the boot time, which Linux gives in whole
    seconds; both ends of this subtraction count from boot.
    """
    ticks = start_ticks(pid)
    return _seconds_since(ticks) if ticks is not None else None


def _seconds_since(ticks: int) -> float | None:
    """Seconds from `ticks` after boot (a process's start time) until now."""
    try:
        with open("/proc/uptime", "rb") as uptime:
            now = float(uptime.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, now - ticks / os.sysconf("SC_CLK_TCK"))


def _describe(proc: Any, now: float) -> dict[str, Any] | None:
    """pid, cmd and age of a live process, or None when it is gone or a zombie."""
    import psutil

    try:
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            try:
                cmd = " ".join(proc.cmdline()) or proc.name()
            except psutil.AccessDenied:
                cmd = proc.name()
            age = _age_linux(proc.pid)
            return {"pid": proc.pid, "cmd": cmd,
                    "age_s": round(age if age is not None else now - proc.create_time(), 3)}
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def start_ticks(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (Linux); None elsewhere or when gone."""
    stat = _proc_stat(pid)
    return stat[1] if stat is not None else None


def _proc_stat(pid: int) -> tuple[str, int, str] | None:
    """(state, start time in clock ticks, command name) from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    head, _, rest = data.rpartition(b")")
    fields = rest.split()
    try:
        return fields[0].decode(), int(fields[19]), head.partition(b"(")[2].decode(errors="replace")
    except (IndexError, ValueError):
        return None


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", "rb") as children:
                found.extend(int(word) for word in children.read().split())
        except OSError:
            pass
    return found


def _walk_from_proc() -> list[int]:
    """graceshell's descendants, parents first, read from /proc/PID/task/TID/children.

    It costs in proportion to the tree, not to every process on the machine
    (as a scan of all /proc/*/stat does).
    """
    order, queue = [], [pid for pid in _children(os.getpid()) if pid not in _HELPERS]
    while queue:
        pid = queue.pop(0)
        order.append(pid)
        queue.extend(_children(pid))
    return order


def _signal_from_proc(signum: int, until_gone: bool) -> list[dict[str, Any]] | None:
    """The fast path of signal_descendants: /proc and pidfds, no psutil.

    Each process is described, then signalled through a pidfd opened after
    checking that its start time is still the one described, so a recycled
    pid is never signalled. Parents come first, so the worker itself dies
    within microseconds of the step.
    """
    from graceshell.signals import signal_name

    if not _proc_path_available():
        return None
    hit: dict[int, dict[str, Any]] = {}
    for _ in range(_KILL_ROUNDS if until_gone else 1):
        fresh = 0
        for pid in _walk_from_proc():
            if pid in hit:
                continue
            stat = _proc_stat(pid)
            if stat is None or stat[0] == "Z":
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                    cmd = cmdline.read().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
                pidfd = os.pidfd_open(pid)
            except (OSError, ValueError):
                continue
            try:
                again = _proc_stat(pid)
                if again is None or again[1] != stat[1]:
                    continue  # gone, and its pid taken by another process
                signal.pidfd_send_signal(pidfd, signum)
            except OSError:
                continue
            finally:
                os.close(pidfd)
            age = _seconds_since(stat[1])  # after the signal: the kill is not late by it
            hit[pid] = {"pid": pid, "cmd": cmd or stat[2], "age_s": round(age, 3) if age is not None else None,
                        "signal": signal_name(signum)}
            fresh += 1
        if not fresh:
            break
    return list(hit.values())


def signal_descendants(signum: int, *, until_gone: bool) -> list[dict[str, Any]]:
    """Send `signum` to every live descendant of graceshell.

    Returns one entry (pid, cmd, age_s, signal) per process signalled. With
    `until_gone` (for SIGKILL) it scans again until a scan finds nobody new,
    so that children forked while the tree was being killed die too.
    """
    fast = _signal_from_proc(signum, until_gone)
    if fast is not None:
        return fast
    import psutil

    from graceshell.signals import signal_name

    me = psutil.Process()
    hit: dict[int, dict[str, Any]] = {}
    for _ in range(_KILL_ROUNDS if until_gone else 1):
        now = time.time()
        try:
            found = _without_helpers(me.children(recursive=True))
        except psutil.Error:
            found = []
        fresh = 0
        for proc in found:
            if proc.pid in hit:
                continue
            info = _describe(proc, now)
            if info is None:
                continue
            try:
                proc.send_signal(signum)  # psutil checks the pid was not reused
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            info["signal"] = signal_name(signum)
            hit[proc.pid] = info
            fresh += 1
        if not fresh:
            break
    return list(hit.values())


def living_descendants() -> list[dict[str, Any]]:
    """pid, cmd, age of every descendant still alive (for the survivors warning)."""
    import psutil

    now = time.time()
    try:
        found = _without_helpers(psutil.Process().children(recursive=True))
    except psutil.Error:
        return []
    return [info for info in (_describe(p, now) for p in found) if info is not None]


def _without_helpers(procs: list[Any]) -> list[Any]:
    """psutil's descendants of graceshell minus its helpers (which have no children)."""
    return [proc for proc in procs if proc.pid not in _HELPERS]
