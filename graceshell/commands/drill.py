"""`graceshell drill`: stop a worker the way a platform would, and say
whether it would survive.

The drill plays the platform. It runs the worker (under `graceshell run`,
or bare with --no-wrap) in a process tree of its own, as a subreaper so
that nothing escapes it, waits until the worker is ready, then delivers the
platform's stop signal by the platform's model:

  all    to every process of the tree at once (Heroku, Render, systemd)
  group  to the process group of the top process (a terminal's Ctrl-C)
  pid1   to the top process only (Docker, Kubernetes, ECS, Fly)

and SIGKILLs whatever is left at the platform's timeout. The verdict is
clean only when the worker stopped on its own within the budget: no
SIGKILL, graceshell's or the platform's (a job the ledger did not see dies
with it unseen), and no orphaned job.

While the stop runs, the drill keeps every time that matters: graceshell's
log lines as they arrive (each ladder step, the worker's exit, the final
KILL) and the job ledger's changes (a job finishing or requeued). They are
the verdict's `timeline`, drawn by `render` as a bar from the stop to the
platform's deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

from graceshell.commands import timeline
from graceshell.engine import tree
from graceshell.durations import format_duration
from graceshell.errors import UsageError
from graceshell.config.plan import run_command_line
from graceshell.engine.report import shell_status
from graceshell.config.platforms import BROADCASTS
from graceshell.signals import signal_name

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from typing import Any, TextIO

    from graceshell.config.plan import RunPlan

DRILL_TIMEOUT_WITHOUT_PLATFORM = 30.0
DEFAULT_AFTER = 5.0
_READY_CHECK = 0.05  # seconds between looks for --when-ready's file (the drill is a test tool)


_EVENT_MARK = '{"event": "graceshell.'  # how graceshell's JSON log lines begin (logs.py puts `event` first)


class Drill:
    def __init__(self, plan: RunPlan, *, broadcast: str | None, wrap: bool, after: float | None,
                 when_ready: str | None, config: str | None, out: TextIO) -> None:
        self.plan = plan
        self.broadcast = broadcast or plan.platform.broadcast  # the platform's model, or the `broadcast` setting
        if self.broadcast not in BROADCASTS:
            raise UsageError(f"--broadcast: {self.broadcast!r} is not one of {', '.join(BROADCASTS)}")
        self.timeout = plan.platform_timeout if plan.platform_timeout is not None else DRILL_TIMEOUT_WITHOUT_PLATFORM
        self.wrap = wrap
        self.after = after
        self.when_ready = when_ready
        self.config = config
        self.out = out
        self.report: dict[str, Any] | None = None
        # graceshell's log events, each with the drill's clock when it arrived.
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.watch: LedgerWatch | None = None

    def _echo_stderr(self, stream: Any) -> None:
        """Pass the child's stderr through, keeping graceshell's events and exit report."""
        for raw in stream:
            line = raw.decode(errors="replace")
            # The worker shares this stderr: an unbuffered `print` writes its
            # text and its newline apart, and graceshell's line can land
            # between them, so an event is looked for anywhere in the line.
            start = line.find(_EVENT_MARK)
            if start >= 0:
                try:
                    found = json.loads(line[start:])
                except ValueError:
                    found = None
                if isinstance(found, dict):
                    self.events.append((time.monotonic(), found))
                    if found.get("event") == "graceshell.reap" and found.get("main") and self.watch is not None:
                        self.watch.close()  # what is left is read from the report, not from the teardown
                    if found.get("event") == "graceshell.exit":
                        self.report = found
            try:
                self.out.write(line)
                self.out.flush()
            except (OSError, ValueError):
                pass

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        if self.when_ready:
            while not os.path.exists(self.when_ready):
                if proc.poll() is not None:
                    return
                time.sleep(_READY_CHECK)
        else:
            try:
                proc.wait(self.after if self.after is not None else DEFAULT_AFTER)
            except subprocess.TimeoutExpired:
                pass

    def _deliver(self, proc: subprocess.Popen[bytes], signum: int) -> list[int]:
        """The platform's stop, by its model; returns the pids signalled."""
        if self.broadcast == "pid1":
            targets = [proc.pid]
        elif self.broadcast == "group":
            os.killpg(proc.pid, signum)
            return [proc.pid]
        else:
            import psutil

            targets = [p.pid for p in psutil.Process().children(recursive=True)]
        for pid in targets:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        return targets

    def run(self) -> dict[str, Any]:
        subreaper = tree.become_subreaper()
        # Bare, the worker gets only the real environment: what it would get without graceshell.
        env = {**(self.plan.env or {}), **os.environ} if self.wrap else dict(os.environ)
        argv = run_command_line(self.plan, self.config) if self.wrap else self.plan.argv
        try:
            # The worker's output goes to stderr: stdout carries only the verdict.
            proc = subprocess.Popen(argv, env=env, stdout=sys.stderr.fileno(), stderr=subprocess.PIPE,
                                    start_new_session=True)
        except FileNotFoundError:
            raise UsageError(f"{argv[0]}: command not found") from None
        reader = threading.Thread(target=self._echo_stderr, args=(proc.stderr,), daemon=True)
        reader.start()
        self._wait_ready(proc)
        if proc.poll() is not None:
            reader.join(5)
            return self._verdict(proc, stopped_at=None, ended_at=time.monotonic(), platform_killed=[],
                                 signalled=[], subreaper=subreaper, early=True)
        signum = self.plan.platform.stop_signal
        self.watch = LedgerWatch.of(proc.pid) if self.wrap else None
        stopped_at = time.monotonic()
        if self.watch is not None:
            self.watch.start(stopped_at)
        signalled = self._deliver(proc, signum)
        try:
            proc.wait(self.timeout)
            platform_killed: list[dict[str, Any]] = []
        except subprocess.TimeoutExpired:
            platform_killed = tree.signal_descendants(signal.SIGKILL, until_gone=True)
            proc.wait()
        ended_at = time.monotonic()
        # Anything still around after the worker is gone: a container's
        # end, or the platform's SIGKILL, would take it.
        leftovers = tree.signal_descendants(signal.SIGKILL, until_gone=True)
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
        reader.join(5)
        if self.watch is not None:
            self.watch.close()
        return self._verdict(proc, stopped_at=stopped_at, ended_at=ended_at,
                             platform_killed=platform_killed + leftovers, signalled=signalled,
                             subreaper=subreaper, early=False)

    def _verdict(self, proc: subprocess.Popen[bytes], *, stopped_at: float | None, ended_at: float,
                 platform_killed: list[dict[str, Any]], signalled: list[int], subreaper: bool,
                 early: bool) -> dict[str, Any]:
        code = shell_status(proc.returncode or 0)
        report = self.report or {}
        orphaned = report.get("orphaned_jobs", []) if self.wrap else []
        unread = report.get("orphaned_jobs_unread", 0) if self.wrap else 0  # left in the ledger, not read
        orphan_count = len(orphaned) + unread
        took = round(ended_at - stopped_at, 3) if stopped_at is not None else None
        # graceshell's final KILL took a process down: whatever that process
        # was doing outside the ledger died unseen, so that is no survival.
        sigkilled = [p for p in report.get("killed", []) if p.get("signal") == "KILL"]
        survived = not early and not platform_killed and not sigkilled and not orphaned
        if early:
            verdict = f"the worker exited with {code} before the stop (nothing was drilled)"
        elif platform_killed:
            verdict = (f"needed the platform's SIGKILL at {format_duration(self.timeout)}: "
                       f"{len(platform_killed)} process(es) killed")
        elif sigkilled:
            verdict = (f"did not stop on its own: graceshell SIGKILLed {len(sigkilled)} process(es) at its budget "
                       f"({format_duration(self.plan.budget)}); a job the ledger did not see died with them")
            if orphaned:
                verdict += f", and {orphan_count} job(s) in the ledger did not fit"
        elif orphaned:
            requeued = sum(1 for job in orphaned if job.get("requeued"))
            verdict = (f"stopped in {took}s, but {orphan_count} job(s) did not fit in the budget "
                       f"({requeued} back in the queue, {len(orphaned) - requeued} not"
                       + (f", {unread} not read)" if unread else ")"))
        elif report.get("outcome") == "escalated":
            verdict = f"stopped in {took}s of {format_duration(self.timeout)}, at a later step of the ladder"
        else:
            verdict = f"stopped cleanly in {took}s of {format_duration(self.timeout)}"
        events = [] if early or stopped_at is None else self._timeline(stopped_at, took, code, platform_killed,
                                                                         orphaned)
        return {
            "survived": survived, "verdict": verdict, "platform": self.plan.platform.name,
            "broadcast": self.broadcast, "stop_signal": signal_name(self.plan.platform.stop_signal),
            "platform_timeout_s": self.timeout, "wrapped": self.wrap, "exit_code": code, "stopped_after_s": took,
            "signalled": signalled, "platform_killed": platform_killed, "orphaned_jobs": orphaned,
            "outcome": report.get("outcome"), "graceshell_killed": report.get("killed", []),
            "subreaper": subreaper, "timeline": events,
        }

    def _timeline(self, stopped_at: float, took: float | None, code: int, platform_killed: list[dict[str, Any]],
                  orphaned: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every event of the stop, in seconds after it (see graceshell.timeline)."""
        event = timeline.event
        stop = signal_name(self.plan.platform.stop_signal)
        whom = {"all": "every process", "group": "the process group", "pid1": "the top process"}[self.broadcast]
        found = [event(0.0, f"stop: {stop} to {whom} (platform {self.plan.platform.name})", "stop")]
        exited = None
        report = self.report or {}
        ladder = report.get("ladder") or []
        fired = report.get("steps_fired", 0)
        for arrived, item in self.events:
            name, t = item.get("event"), arrived - stopped_at
            if name == "graceshell.forward" and item.get("received") is not None and not any(
                    e["kind"] == "step" for e in found):
                found.append(event(t, f"{item.get('signal')} to the worker: warm shutdown", "step"))
            elif name == "graceshell.escalate" and item.get("step") != "final":
                index = int(item.get("step", 0))
                # The step before the KILL is the cold one, unless it goes out with the warm one at 0s
                # (sidekiq: TSTP, then TERM), as RunPlan.warm_signal reads the ladder.
                last = index == len(ladder) - 2 and ladder[index]["at"] > 0
                found.append(event(item.get("elapsed_s", t), f"{item.get('signal')} to the worker: "
                                   f"step {index + 1}{', cold shutdown' if last else ''}", "step"))
            elif name == "graceshell.escalate":
                count = len(item.get("killed") or [])
                found.append(event(item.get("elapsed_s", t), f"graceshell's KILL of the whole tree at its budget: "
                                   f"{count} process(es) killed", "kill"))
            elif name == "graceshell.reap" and item.get("main"):
                how = f"killed by {item['signal']}" if item.get("signal") else f"exit {item.get('exit_code')}"
                exited = t
                found.append(event(t, f"the worker exited ({how})", "exit"))
        for index, step in enumerate(ladder[1:], start=1):
            if index >= fired:  # planned, but the worker was gone first
                what = ("graceshell's KILL" if step["signal"] == "KILL" else f"{step['signal']} (step {index + 1})")
                found.append(event(step["at"], f"{what} at {format_duration(step['at'])}: not needed", "step",
                                   fired=False))
        if self.watch is not None:
            left = {job.get("file") for job in orphaned}
            for change in self.watch.changes:
                if change["what"] == "finished" and change["file"] in left:
                    continue  # removed with the ledger at the end, not finished
                found.append(event(change["t"], f"job {change['label']} {change['what']}",
                                   "cut" if change["what"] == "requeued" else "job"))
            for job in orphaned:
                if not any(c["file"] == job.get("file") and c["what"] == "requeued" for c in self.watch.changes):
                    state = "requeued" if job.get("requeued") else "cut off: left in the ledger, not requeued"
                    found.append(event(exited if exited is not None else took or 0.0,
                                       f"job {_job_label(job)} {state}", "cut"))
        if not self.wrap and took is not None:
            found.append(event(took, f"the worker exited (exit {code})", "exit"))
        if platform_killed:
            found.append(event(self.timeout, f"platform's SIGKILL: {len(platform_killed)} process(es) killed",
                               "kill"))
        else:
            found.append(event(self.timeout, f"platform's SIGKILL at {format_duration(self.timeout)}: not needed",
                               "deadline", fired=False))
        return found


class LedgerWatch:
    """The worker's job ledger during the stop: when each job left it
    (finished) or was marked requeued. inotify wakes a thread; it reads the
    directory only when it changed."""

    def __init__(self, jobs_dir: str) -> None:
        self.jobs_dir = jobs_dir
        self.changes: list[dict[str, Any]] = []
        self.seen: dict[str, dict[str, Any]] = {}  # file -> its entry
        self.versions: dict[str, tuple[int, int, int]] = {}  # file -> inode, mtime and size when it was read
        self.started_at = 0.0
        self.fd: int | None = None
        self.wake_r, self.wake_w = os.pipe()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()  # the watch thread and close() both scan
        self.closed = False

    @classmethod
    def of(cls, graceshell_pid: int) -> LedgerWatch | None:
        """The ledger of the worker under the graceshell `graceshell_pid`, if it can be found."""
        import psutil

        from graceshell.jobs import JOBS_DIR_ENV

        try:
            for child in psutil.Process(graceshell_pid).children():
                jobs_dir = child.environ().get(JOBS_DIR_ENV)
                if jobs_dir and os.path.isdir(jobs_dir):
                    return cls(jobs_dir)
        except (psutil.Error, OSError):
            pass
        return None

    def start(self, started_at: float) -> None:
        from graceshell.engine.ledger import watch_directory

        self.started_at = started_at
        self.fd = watch_directory(self.jobs_dir)
        self._scan(first=True)
        if self.fd is not None:
            self.thread = threading.Thread(target=self._loop, daemon=True)
            self.thread.start()

    def _loop(self) -> None:
        import select

        from graceshell.engine.ledger import drain

        assert self.fd is not None
        while True:
            ready, _, _ = select.select([self.fd, self.wake_r], [], [])
            if self.wake_r in ready:
                return
            drain(self.fd)
            self._scan(first=False)

    def _scan(self, *, first: bool) -> None:
        with self.lock:
            self._compare(time.monotonic() - self.started_at, first=first)

    def _compare(self, now: float, *, first: bool) -> None:
        from graceshell.engine.ledger import entry_names
        from graceshell.jobs import MAX_ENTRY
        from graceshell.jsonfile import Unreadable, read_object

        names = set(entry_names(self.jobs_dir, ordered=False))
        for name in set(self.seen) - names:
            self.changes.append({"t": now, "file": name, "what": "finished", "label": _job_label(self.seen[name])})
            del self.seen[name]
            self.versions.pop(name, None)
        for name in names:
            path = os.path.join(self.jobs_dir, name)
            try:
                info = os.stat(path, follow_symlinks=False)
            except OSError:
                continue
            version = (info.st_ino, info.st_mtime_ns, info.st_size)
            if self.versions.get(name) == version:
                continue  # unchanged since it was read: the writers replace an entry, never edit it in place
            try:
                entry = read_object(path, MAX_ENTRY)
            except Unreadable:
                continue
            self.versions[name] = version
            before = self.seen.get(name)
            if before is None and not first:
                self.changes.append({"t": now, "file": name, "what": "started", "label": _job_label(entry)})
            if entry.get("requeued") and not (before or {}).get("requeued"):
                self.changes.append({"t": now, "file": name, "what": "requeued", "label": _job_label(entry)})
            self.seen[name] = entry

    def close(self) -> None:
        """Stop watching, after one last look: called when the worker has
        exited, before graceshell removes the ledger, so what is gone now
        has finished (a busy machine may not have run the thread since)."""
        if self.closed:
            return
        self.closed = True
        try:
            os.write(self.wake_w, b"x")
        except OSError:
            pass
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(2)
        self._scan(first=False)
        for fd in (self.fd, self.wake_r, self.wake_w):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass


def _job_label(job: dict[str, Any]) -> str:
    ident = str(job.get("id") or "?")
    short = ident if len(ident) <= 12 else ident[:8] + "\u2026"
    return f"{short} {job.get('name')}" if job.get("name") else short


def render(result: dict[str, Any], tty: bool | None = None) -> str:
    """The verdict for people, with the stop drawn as a timeline; `tty`
    (default: whether stdout is a terminal) chooses block characters, and
    colour unless NO_COLOR (no-color.org) is set, over plain ASCII."""
    if tty is None:
        try:
            tty = sys.stdout.isatty()
        except (AttributeError, ValueError):
            tty = False
    head = "SURVIVED" if result["survived"] else "DID NOT SURVIVE"
    lines = [f"graceshell drill: {head}: {result['verdict']}",
             f"  platform {result['platform']}: {result['stop_signal']} to {result['broadcast']}, "
             f"SIGKILL after {format_duration(result['platform_timeout_s'])}; "
             f"{'under graceshell' if result['wrapped'] else 'bare (--no-wrap)'}; exit {result['exit_code']}"]
    for proc in result["platform_killed"]:
        lines.append(f"  killed by the platform: pid {proc['pid']} {proc['cmd']}")
    for job in result["orphaned_jobs"]:
        state = " (requeued)" if job.get("requeued") else ""
        lines.append(f"  orphaned job: {job.get('id')} {job.get('name')}{state}")
    events = result.get("timeline") or []
    if events:
        deadline = result["platform_timeout_s"]
        lines.append("")
        lines.append(f"  timeline, from the stop to the platform's SIGKILL at {format_duration(deadline)}:")
        lines.extend(timeline.render(events, deadline, tty=tty, colour=tty and "NO_COLOR" not in os.environ))
        used = timeline.summary(result.get("stopped_after_s"), deadline)
        if used:
            lines.append(f"  {used}")
    return "\n".join(lines) + "\n"
