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
clean only when the worker was gone within the timeout and graceshell
reported no orphaned job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

from graceshell import tree
from graceshell.durations import format_duration
from graceshell.errors import UsageError
from graceshell.plan import run_command_line
from graceshell.report import shell_status
from graceshell.platforms import BROADCAST_ALL
from graceshell.signals import signal_name

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from typing import Any, TextIO

    from graceshell.plan import RunPlan

BROADCASTS = ("all", "group", "pid1")
DRILL_TIMEOUT_WITHOUT_PLATFORM = 30.0
DEFAULT_AFTER = 5.0
_READY_CHECK = 0.05  # seconds between looks for --when-ready's file (the drill is a test tool)


class Drill:
    def __init__(self, plan: RunPlan, *, broadcast: str | None, wrap: bool, after: float | None,
                 when_ready: str | None, config: str | None, out: TextIO) -> None:
        self.plan = plan
        self.broadcast = broadcast or ("all" if plan.platform.broadcast == BROADCAST_ALL else "pid1")
        if self.broadcast not in BROADCASTS:
            raise UsageError(f"--broadcast: {self.broadcast!r} is not one of {', '.join(BROADCASTS)}")
        self.timeout = plan.platform_timeout if plan.platform_timeout is not None else DRILL_TIMEOUT_WITHOUT_PLATFORM
        self.wrap = wrap
        self.after = after
        self.when_ready = when_ready
        self.config = config
        self.out = out
        self.report: dict[str, Any] | None = None

    def _echo_stderr(self, stream: Any) -> None:
        """Pass the child's stderr through, keeping graceshell's exit report."""
        for raw in stream:
            line = raw.decode(errors="replace")
            if line.startswith("{") and '"graceshell.exit"' in line:
                try:
                    self.report = json.loads(line)
                except ValueError:
                    pass
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
        stopped_at = time.monotonic()
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
        return self._verdict(proc, stopped_at=stopped_at, ended_at=ended_at,
                             platform_killed=platform_killed + leftovers, signalled=signalled,
                             subreaper=subreaper, early=False)

    def _verdict(self, proc: subprocess.Popen[bytes], *, stopped_at: float | None, ended_at: float,
                 platform_killed: list[dict[str, Any]], signalled: list[int], subreaper: bool,
                 early: bool) -> dict[str, Any]:
        code = shell_status(proc.returncode or 0)
        report = self.report or {}
        orphaned = report.get("orphaned_jobs", []) if self.wrap else []
        took = round(ended_at - stopped_at, 3) if stopped_at is not None else None
        survived = not early and not platform_killed and not orphaned
        if early:
            verdict = f"the worker exited with {code} before the stop (nothing was drilled)"
        elif platform_killed:
            verdict = (f"needed the platform's SIGKILL at {format_duration(self.timeout)}: "
                       f"{len(platform_killed)} process(es) killed")
        elif orphaned:
            requeued = sum(1 for job in orphaned if job.get("requeued"))
            verdict = (f"stopped in {took}s, but {len(orphaned)} job(s) did not fit in the budget "
                       f"({requeued} back in the queue, {len(orphaned) - requeued} not)")
        elif report.get("outcome") == "killed":
            verdict = (f"stopped in {took}s of {format_duration(self.timeout)}, but only by graceshell's "
                       "SIGKILL at its budget (no job was recorded as in flight)")
        else:
            verdict = f"stopped cleanly in {took}s of {format_duration(self.timeout)}"
        return {
            "survived": survived, "verdict": verdict, "platform": self.plan.platform.name,
            "broadcast": self.broadcast, "stop_signal": signal_name(self.plan.platform.stop_signal),
            "platform_timeout_s": self.timeout, "wrapped": self.wrap, "exit_code": code, "stopped_after_s": took,
            "signalled": signalled, "platform_killed": platform_killed, "orphaned_jobs": orphaned,
            "outcome": report.get("outcome"), "graceshell_killed": report.get("killed", []),
            "subreaper": subreaper,
        }


def render(result: dict[str, Any]) -> str:
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
    return "\n".join(lines) + "\n"
