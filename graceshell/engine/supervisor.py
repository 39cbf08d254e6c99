"""The run loop: spawn the worker, then sleep until something happens.

Everything that can wake graceshell is a file descriptor in one selector:
the signal wakeup pipe (every caught signal, SIGCHLD included, writes its
number there), the worker's pidfd, and an inotify watch on the job ledger
(out of the selector for a moment after each wake: engine/busy.py).
The only timeout is the next deadline (a ladder step, a leftover kill, the
reap grace, a look at the busy ledger), so an idle worker costs graceshell no
wake-ups at all.

All reaping happens in one place (`_reap`), so the worker's pid cannot be
recycled while graceshell still holds it, and signals to the worker go
through its pidfd where the kernel has them.
"""

from __future__ import annotations

import os
import selectors
import signal
import time

from graceshell.engine import tree
from graceshell.config.ladder import describe
from graceshell.engine.ledger import Ledger
from graceshell.logs import LOG_FORMAT_ENV, LOG_LEVEL_ENV
from graceshell.config.plan import RunPlan
from graceshell.engine.report import build_report
from graceshell.errors import INTERNAL_ERROR_EXIT
from graceshell.signals import forwardable_signals, read_signals, signal_name, wakeup_pipe

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from typing import Any

    from structlog.typing import FilteringBoundLogger

    from graceshell.engine.busy import BusyWatch
    from graceshell.engine.guard import Guard
    from graceshell.engine.summary import RepeatSummary
    from graceshell.fleet.notices import Notice
    from graceshell.fleet.services import Fleet
    from graceshell.fleet.status import Status

# How long to wait for the kernel to finish off a SIGKILLed tree before
# reporting survivors (processes stuck in uninterruptible sleep) and leaving.
REAP_GRACE = 5.0
# Signals Python itself ignores at start-up; their SIG_IGN says nothing about
# what our parent wanted, so they are reset to their defaults for the worker.
# graceshell keeps ignoring them and never forwards them: they are raised by
# its own writes (a log line to a closed pipe after a log collector or
# `graceshell start` died), and a forwarded SIGPIPE would kill the worker.
_PYTHON_IGNORES = frozenset({int(signal.SIGPIPE), int(getattr(signal, "SIGXFSZ", signal.SIGPIPE))})
# Time given to the on_orphans hook when no platform deadline bounds it.
HOOK_TIMEOUT_WITHOUT_PLATFORM = 30.0
# Kept free before the platform's deadline when the hook is bounded by it.
HOOK_MARGIN = 0.5
# The sweep of run directories that kill -9'd graceshells left waits this
# long, off the path of the worker's start and of short runs (which never
# need it); workers are long-lived, so it happens in nearly every run.
SWEEP_AFTER = 0.5


def _reap_all_blocking() -> None:
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _has_exited(pid: int) -> bool:
    """Has our child `pid` exited? It is left to be reaped (WNOWAIT)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except (ChildProcessError, AttributeError):
        return False


def _note_signal(signum: int, frame: Any) -> None:
    """Handler for every caught signal: the wakeup fd carries the news."""


class Supervisor:
    def __init__(self, plan: RunPlan, log_format: str = "auto", log_level: str = "info") -> None:
        self.plan = plan
        self.log_format, self.log_level = log_format, log_level
        self.log: FilteringBoundLogger  # built once the worker runs: see _run
        self.caught: frozenset[int] = frozenset()
        self.pid = 0
        self.subreaper = False
        self.pidfd: int | None = None
        self.started = 0.0
        # Stop timeline (monotonic seconds); None until it happens.
        self.stop_at: float | None = None
        self.stop_signal: int | None = None
        self.first_signal: int | None = None
        self.next_step = 0
        self.steps_fired = 0
        self.kill_fired_at: float | None = None
        # The worker's end and what it left behind.
        self.main_status: int | None = None
        self.main_exit_at: float | None = None
        self.leftover_term_at: float | None = None
        self.children_remain = True
        self.killed: list[dict[str, Any]] = []
        self.survivors: list[dict[str, Any]] = []
        self.reaped_orphans = 0
        # The job ledger, and the busy state reported from it (made with the loop).
        self.ledger: Ledger | None = None
        self.busy: BusyWatch | None = None
        self.notice: dict[str, Any] | None = None
        self.sweep_at: float | None = None  # when to remove run directories dead graceshells left
        self.sweep_resume: str | None = None  # the one a sweep's batch ended in
        self.guard: Guard | None = None  # signals the worker if graceshell dies first
        self.wakeup: int | None = None
        # The fleet options (--http, --interruption-notices); None when all are off.
        self.fleet: Fleet | None = None
        # The cloud's interruption notice that began the stop, and whether the
        # platform's own stop signal has come since (it is that notice's repeat).
        self.interruption: dict[str, Any] | None = None
        self.interruption_signal_seen = False
        # A storm of signals logs the first few of each, then counts per second (made with the logger).
        self.forwards: RepeatSummary
        self.signal_events: RepeatSummary

    # -- start ---------------------------------------------------------------

    def _catch_signals(self) -> int:
        """Route every signal we handle into a non-blocking wakeup pipe."""
        read_fd = wakeup_pipe()
        # Our parent may have blocked signals; we must see them all.
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        caught = set()
        for signum in sorted(forwardable_signals() | self.plan.stop_signals | {int(signal.SIGCHLD)}):
            if signum in _PYTHON_IGNORES and signum not in self.plan.stop_signals:
                continue
            inherited_ignore = (signal.getsignal(signum) == signal.SIG_IGN
                                and signum not in _PYTHON_IGNORES)
            # A signal our parent ignored (nohup's HUP) stays ignored, for us
            # and the worker; stop signals are always ours to handle.
            if inherited_ignore and signum not in self.plan.stop_signals and signum != signal.SIGCHLD:
                continue
            signal.signal(signum, _note_signal)
            caught.add(signum)
        self.caught = frozenset(caught)
        return read_fd

    def start(self) -> int:
        """Catch signals, adopt orphans, spawn the worker; returns the wakeup fd.

        Signals are caught before the spawn, so a stop that arrives before
        the worker exists waits in the pipe and is acted on right after.
        Raises OSError when the command cannot be executed.
        """
        wakeup = self.wakeup = self._catch_signals()
        self.subreaper = tree.become_subreaper()
        self.ledger = Ledger()
        # Files (preset, graceshell.yml, .env) set defaults; the real environment
        # wins; the ledger's paths are this run's own.
        env = {**(self.plan.env or {}), **os.environ, **self.ledger.environment(self.plan.kill_at),
               # The integrations inside the worker log the way graceshell does.
               LOG_FORMAT_ENV: self.log_format, LOG_LEVEL_ENV: self.log_level}
        self.pid = tree.spawn_worker(self.plan.argv, env, self.caught | _PYTHON_IGNORES)
        self.started = time.monotonic()
        if hasattr(os, "pidfd_open"):
            try:
                self.pidfd = os.pidfd_open(self.pid)
            except OSError:  # kernels before 5.3
                self.pidfd = None
        # After the spawn, so that none of this delays the worker's start.
        self.ledger.claim()
        from graceshell.engine.guard import start as start_guard

        if not _has_exited(self.pid):  # a worker that is already gone (`true`) needs no guard
            self.guard = start_guard(self.pid, self.pidfd, self.plan.parent_death_signal)
        self.sweep_at = self.started + SWEEP_AFTER
        return wakeup

    # -- the loop -------------------------------------------------------------

    def run(self) -> int:
        """Supervise until the worker and everything it started are gone."""
        try:
            return self._run()
        finally:
            if self.main_status is not None:
                self._stop_guard()
            # else graceshell is leaving with its worker alive (an error of ours, or
            # survivors): the guard stays, and gives the worker its parent-death signal.
            if self.fleet is not None:
                self.fleet.close()
            if self.ledger is not None:
                self.ledger.remove()
            self._release()

    def _release(self) -> None:
        """Close what the run opened, so that runs in one process leave nothing behind."""
        if self.wakeup is not None:
            written = signal.set_wakeup_fd(-1)
            for fd in {written, self.wakeup} - {-1}:
                os.close(fd)
            self.wakeup = None
        if self.pidfd is not None:  # the worker never exited (survivors)
            os.close(self.pidfd)
            self.pidfd = None

    def _run(self) -> int:
        wakeup = self.start()
        # The logging library is imported only now, while the worker starts:
        # the worker never waits for it, and a signal that arrives meanwhile
        # waits in the wakeup pipe for the loop below.
        from graceshell.logs import make_logger

        from graceshell.engine.summary import RepeatSummary

        self.log = make_logger(self.log_format, self.log_level, process=self.plan.name)
        self.forwards = RepeatSummary(self.log, "graceshell.forward_summary")
        self.signal_events = RepeatSummary(self.log, "graceshell.signal_summary")
        self.log.info(
            "graceshell.start", pid=self.pid, command=self.plan.argv, graceshell_pid=os.getpid(),
            platform=self.plan.platform.name, platform_source=self.plan.platform_source,
            platform_timeout_s=self.plan.platform_timeout, budget_s=self.plan.budget,
            ladder=describe(self.plan.ladder), subreaper=self.subreaper, pidfd=self.pidfd is not None,
            jobs_dir=self.ledger.jobs_dir if self.ledger else None,
            parent_death_signal=signal_name(self.plan.parent_death_signal))
        if self.plan.http is not None or self.plan.interruption_notices is not None:
            from graceshell.fleet.services import start_fleet

            self.fleet = start_fleet(self.plan, self.log, self.status, self._on_interruption)
        try:
            self._loop(wakeup)
        except Exception as exc:  # a bug of ours must not leave the worker's tree behind
            self.log.error("graceshell.internal_error", error=repr(exc))
            self._stop_guard()
            tree.signal_descendants(signal.SIGKILL, until_gone=True)
            _reap_all_blocking()
            return INTERNAL_ERROR_EXIT
        if self.fleet is not None:  # before the exit report: an acknowledgement to the cloud is logged above it
            self.fleet.close()
            self.fleet = None
        return self._finish()

    def _loop(self, wakeup: int) -> None:
        with selectors.DefaultSelector() as selector:
            self._loop_in(selector, wakeup)

    def _loop_in(self, selector: selectors.BaseSelector, wakeup: int) -> None:
        selector.register(wakeup, selectors.EVENT_READ)
        if self.pidfd is not None:
            selector.register(self.pidfd, selectors.EVENT_READ)
        watch = None
        if self.ledger is not None:
            from graceshell.engine.busy import BusyWatch

            self.busy = BusyWatch(self.ledger, self.log)
            watch = self.busy.start(selector, time.monotonic())
        if self.fleet is not None:
            self.fleet.register(selector)
        self._prepare_notice()
        while True:
            callbacks = []
            for key, events in selector.select(self._timeout()):
                if key.fd == wakeup:
                    self._drain(wakeup)
                elif key.fd == watch:
                    self.busy.on_readable(time.monotonic())  # type: ignore[union-attr]
                elif callable(key.data):  # the fleet's fds: served once the stop's own work is done
                    callbacks.append((key.data, events))
            if self.busy is not None:
                self.busy.on_due(time.monotonic())
            for summary in (self.forwards, self.signal_events):
                summary.flush_due(time.monotonic())
            if self.sweep_at is not None and (self.stop_at is not None or self.main_status is not None):
                self.sweep_at = None  # housekeeping never delays a stop; the next graceshell sweeps
            elif self.sweep_at is not None and time.monotonic() >= self.sweep_at:
                self._sweep()
            self._reap(selector)
            self._fire_due(time.monotonic())
            if self.fleet is not None:
                self.fleet.dispatch(callbacks, time.monotonic())
            if self.main_status is not None and not self.children_remain:
                return
            if self.kill_fired_at is not None and time.monotonic() >= self.kill_fired_at + REAP_GRACE:
                self.survivors = tree.living_descendants()
                return

    def _drain(self, wakeup: int) -> None:
        for signum in read_signals(wakeup):
            if signum != signal.SIGCHLD:  # SIGCHLD only wakes the loop; _reap follows
                self._on_signal(signum)

    def _deadlines(self) -> list[float]:
        """Every moment at which graceshell must act without being woken."""
        busy_due = self.busy.due() if self.busy is not None else None
        due = [] if busy_due is None else [busy_due]  # a look at the ledger, a settle, the rate limit
        due += [s.flush_at for s in (self.forwards, self.signal_events) if s.flush_at is not None]
        if self.sweep_at is not None:
            due.append(self.sweep_at)
        if self.fleet is not None and (fleet_due := self.fleet.deadline()) is not None:
            due.append(fleet_due)
        if self.kill_fired_at is not None:
            return [self.kill_fired_at + REAP_GRACE, *due]
        if self.stop_at is not None and self.main_status is None and self.next_step < len(self.plan.ladder):
            due.append(self.stop_at + self.plan.ladder[self.next_step].at)
        if self.main_status is not None and self.children_remain:
            assert self.main_exit_at is not None
            if self.leftover_term_at is None:
                due.append(self.main_exit_at + self.plan.linger)
            else:
                due.append(self.leftover_term_at + self.plan.linger)
            if self.stop_at is not None:
                due.append(self.stop_at + self.plan.kill_at)
        return due

    def _timeout(self) -> float | None:
        due = self._deadlines()
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _fire_due(self, now: float) -> None:
        if self.kill_fired_at is not None:
            return
        if self.main_status is None:
            while (self.stop_at is not None and self.next_step < len(self.plan.ladder)
                   and now >= self.stop_at + self.plan.ladder[self.next_step].at):
                self._fire_step(now)
            return
        if not self.children_remain:
            return
        if self.stop_at is not None and now >= self.stop_at + self.plan.kill_at:
            self._kill_tree(now, reason="budget")
        elif self.leftover_term_at is None and now >= self.main_exit_at + self.plan.linger:  # type: ignore[operator]
            self._term_leftovers(now)
        elif self.leftover_term_at is not None and now >= self.leftover_term_at + self.plan.linger:
            self._kill_tree(now, reason="leftovers")

    # -- signals in -----------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        now = time.monotonic()
        name = signal_name(signum)
        if signum not in self.plan.stop_signals:
            sent = self.plan.remap.get(signum, signum)
            if self._send_main(sent):
                if self.forwards.admit(now, name):
                    self.log.info("graceshell.forward", signal=signal_name(sent), received=name, pid=self.pid)
            elif self.signal_events.admit(now, f"{name} dropped"):
                self.log.info("graceshell.signal", signal=name, action="dropped", reason="worker has exited")
            return
        if self.stop_at is None:
            self.stop_at, self.stop_signal = now, signum
            self.first_signal = self.plan.first_signal(signum)
            self._write_notice(name)  # before the worker hears anything
            if self.main_status is None:
                self._fire_step(now, log_stop=name)
            else:
                self.log.info("graceshell.signal", signal=name, action="stop", budget_s=self.plan.budget)
                self._escalate_leftovers(now)
            tree.warm_up()  # after the worker has its signal: later steps must be on time
            self._prepare_notice()  # for the escalation's notice
            return
        self._on_repeat_stop(signum, now)

    def _on_interruption(self, notice: Notice) -> None:
        """The cloud's warning: the stop begins as if the platform's stop signal
        had come, with the budget cut to fit the notice's deadline."""
        from graceshell.fleet.notices import fitted_plan

        deadline = notice.deadline
        if self.stop_at is not None or self.main_status is not None:
            self.log.info("graceshell.interruption", provider=notice.provider, deadline=deadline, action="none",
                          reason="already stopping" if self.stop_at is not None else "the worker has exited",
                          **notice.detail)
            return
        left = deadline - time.time() if deadline is not None else None
        self.plan, cut = fitted_plan(self.plan, left)
        self.interruption = {"provider": notice.provider, "deadline": deadline}
        self.log.warning("graceshell.interruption", provider=notice.provider,
                         deadline=round(deadline, 3) if deadline is not None else None,
                         deadline_in_s=round(left, 3) if left is not None else None, budget_s=self.plan.kill_at,
                         budget_cut=cut, **notice.detail)
        self._on_signal(self.plan.notice_signal())

    def _on_repeat_stop(self, signum: int, now: float) -> None:
        name = signal_name(signum)
        platform = self.plan.platform
        if self.interruption is not None and not self.interruption_signal_seen and signum == self.stop_signal:
            # The platform's stop after its own notice: the stop it announced, already under way.
            self.interruption_signal_seen = True
            self.log.info("graceshell.signal", signal=name, action="ignored", repeat=True,
                          reason=f"the stop began at the {self.interruption['provider']} interruption notice")
            return
        if platform.repeats_stop_signal and signum == platform.stop_signal == self.stop_signal:
            if self.signal_events.admit(now, f"{name} ignored"):
                self.log.info("graceshell.signal", signal=name, action="ignored",
                              reason=f"{platform.name} repeats its stop signal")
            return
        policy = self.plan.second_signal
        if self.signal_events.admit(now, f"{name} {policy}"):
            self.log.info("graceshell.signal", signal=name, action=policy, repeat=True)
        if policy == "forward":
            sent = self.plan.remap.get(signum, signum)
            if self._send_main(sent) and self.forwards.admit(now, name):
                self.log.info("graceshell.forward", signal=signal_name(sent), received=name, pid=self.pid)
        elif policy == "escalate":
            if self.main_status is None:
                if self.next_step < len(self.plan.ladder):
                    self._fire_step(now)
            else:
                self._escalate_leftovers(now)

    def _write_notice(self, signal_received: str) -> None:
        """The shutdown notice, at the first stop signal: the warm phase (step 0)."""
        received = time.time()
        timeout = self.plan.platform_timeout
        self.notice = {"signal": signal_received, "received_at": round(received, 6),
                       "deadline": round(received + self.plan.kill_at, 6),
                       "platform_deadline": round(received + timeout, 6) if timeout is not None else None,
                       "step": 0, "escalated_at": None}
        self._store_notice()

    def _note_escalation(self, step: int) -> None:
        """Before a later step's signal goes out, the notice says so: processes
        that ignore the platform's broadcast (the integrations) learn that a
        signal arriving now is graceshell's cold shutdown, to be obeyed."""
        if self.notice is None:
            return
        self.notice = {**self.notice, "step": step, "escalated_at": round(time.time(), 6)}
        self._store_notice()

    def _store_notice(self) -> None:
        if self.ledger is None or self.notice is None:
            return
        try:
            self.ledger.write_notice(self.notice)
        except OSError as exc:  # a full disk must not stop the stop
            self.log.error("graceshell.notice_failed", error=str(exc))

    def _prepare_notice(self) -> None:
        """The next notice's file, opened while nothing is waiting on graceshell."""
        if self.ledger is None:
            return
        try:
            self.ledger.prepare_notice()
        except OSError as exc:  # the notice is written the slow way at the stop, or reported then
            self.log.debug("graceshell.notice_prepare_failed", error=str(exc))

    def _sweep(self) -> None:
        assert self.ledger is not None
        removed, self.sweep_resume = self.ledger.sweep_stale(self.sweep_resume)
        # A sweep cut short goes on at the next turn of the loop, after any signal that came meanwhile.
        self.sweep_at = time.monotonic() if self.sweep_resume is not None else None
        if removed:
            self.log.info("graceshell.stale_run_dirs", removed=removed, reason="left by graceshells that no longer exist")

    # -- what the fleet endpoint reports ------------------------------------------

    def status(self) -> Status:
        """The phase and counters as they are now, for /busy, /readyz and /metrics."""
        from graceshell.fleet.status import DRAINING, ESCALATING, EXITING, KILLING, RUNNING, Status

        now = time.monotonic()
        if self.kill_fired_at is not None:
            phase = KILLING
        elif self.main_status is not None:
            phase = EXITING
        elif self.stop_at is None:
            phase = RUNNING
        else:
            phase = ESCALATING if self.steps_fired > 1 else DRAINING
        jobs = self.ledger.count() if self.ledger is not None else 0
        ended = self.main_exit_at if self.main_exit_at is not None else now
        stop_s = max(0.0, ended - self.stop_at) if self.stop_at is not None else None
        left = self.plan.kill_at if self.stop_at is None else max(0.0, self.stop_at + self.plan.kill_at - now)
        return Status(
            phase=phase, pid=self.pid, jobs=jobs, name=self.plan.name,
            oldest_job_started_at=self.ledger.oldest_start() if self.ledger is not None and jobs else None,
            budget_s=self.plan.kill_at, budget_left_s=round(left, 3),
            stop_signal=signal_name(self.stop_signal) if self.stop_signal is not None else None,
            stop_cause=(None if self.stop_signal is None
                        else f"interruption:{self.interruption['provider']}" if self.interruption else "signal"),
            stop_s=round(stop_s, 3) if stop_s is not None else None, steps_fired=self.steps_fired,
            tree_kills=int(self.kill_fired_at is not None), killed_processes=len(self.killed),
            orphaned_jobs=jobs if self.main_status is not None else 0,
            restarts=0, interruption=self.interruption)

    # -- signals out ----------------------------------------------------------

    def _send_main(self, signum: int) -> bool:
        """Signal the worker alone; False when it has already exited."""
        if self.main_status is not None:
            return False
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signum)
            else:
                os.kill(self.pid, signum)  # safe: only we reap it, so the pid is still its own
        except ProcessLookupError:
            return False
        return True

    def _fire_step(self, now: float, log_stop: str | None = None) -> None:
        index = self.next_step
        step = self.plan.ladder[index]
        self.next_step += 1
        self.steps_fired += 1
        assert self.stop_at is not None
        if step.signal == signal.SIGKILL:
            self._kill_tree(now, reason="budget" if now >= self.stop_at + step.at else "second signal")
            return
        sent = step.signal if index else self.first_signal
        assert sent is not None
        if index:
            self._note_escalation(index)
        delivered = self._send_main(sent)
        if index:
            self._prepare_notice()
        if log_stop is not None:  # the stop's own event, written once the worker has its signal
            self.log.info("graceshell.signal", signal=log_stop, action="stop", budget_s=self.plan.budget,
                          ladder=describe(self.plan.ladder, self.first_signal))
        if index == 0:
            self.log.info("graceshell.forward", signal=signal_name(sent), received=signal_name(self.stop_signal or sent),
                          pid=self.pid, delivered=delivered)
        else:
            self.log.warning("graceshell.escalate", step=index, signal=signal_name(sent), pid=self.pid,
                             at_s=step.at, elapsed_s=round(now - self.stop_at, 3), delivered=delivered)

    def _kill_tree(self, now: float, reason: str) -> None:
        """SIGKILL everything: the worker, its group, every descendant and orphan."""
        self.kill_fired_at = now
        self._note_escalation(len(self.plan.ladder) - 1)
        killed = tree.signal_descendants(signal.SIGKILL, until_gone=True)
        if self.main_status is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)  # the group, in case anything escaped the scan
            except (ProcessLookupError, PermissionError):
                pass
        self.killed.extend(killed)
        elapsed = round(now - self.stop_at, 3) if self.stop_at is not None else None
        self.log.warning("graceshell.escalate", step="final", signal="KILL", reason=reason, elapsed_s=elapsed,
                         killed=killed)

    def _term_leftovers(self, now: float) -> None:
        self.leftover_term_at = now
        termed = tree.signal_descendants(signal.SIGTERM, until_gone=False)
        self.killed.extend(termed)
        self.log.warning("graceshell.leftovers", action="term", processes=termed, linger_s=self.plan.linger)

    def _escalate_leftovers(self, now: float) -> None:
        """A stop request after the worker exited: take the leftovers down now."""
        if not self.children_remain:
            return
        if self.leftover_term_at is None:
            self._term_leftovers(now)
        else:
            self._kill_tree(now, reason="second signal")

    # -- reaping --------------------------------------------------------------

    def _reap(self, selector: selectors.BaseSelector) -> None:
        main_exited = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children_remain = False
                break
            if pid == 0:
                self.children_remain = True
                break
            if pid == self.pid:
                self._on_main_exit(status, selector)
                main_exited = True
            elif self.guard is not None and pid == self.guard.pid:  # killed by someone: the worker is unguarded
                self.guard.lost()
                self.log.warning("graceshell.guard_lost", pid=pid, status=os.waitstatus_to_exitcode(status))
            else:
                self.reaped_orphans += 1
                self.log.debug("graceshell.reap", pid=pid, exit_code=os.waitstatus_to_exitcode(status))
        if main_exited and self.children_remain and self.kill_fired_at is None:
            # Anyone still around now is a leftover of the worker's.
            self.log.info("graceshell.leftovers", action="linger", linger_s=self.plan.linger,
                          processes=tree.living_descendants())

    def _stop_guard(self) -> None:
        if self.guard is not None:
            self.guard.stop()
            self.guard = None

    def _on_main_exit(self, status: int, selector: selectors.BaseSelector) -> None:
        self.main_status, self.main_exit_at = status, time.monotonic()
        self._stop_guard()  # nothing left to guard; graceshell waits for no helper of its own
        if self.fleet is not None:
            self.fleet.worker_down()  # Azure's event may now be acknowledged
        if self.pidfd is not None:
            selector.unregister(self.pidfd)  # an exited pidfd stays readable forever
            os.close(self.pidfd)
            self.pidfd = None
        code = os.waitstatus_to_exitcode(status)
        self.log.info("graceshell.reap", pid=self.pid, main=True, exit_code=code if code >= 0 else None,
                      signal=signal_name(-code) if code < 0 else None)

    # -- the end --------------------------------------------------------------

    def _finish(self) -> int:
        assert self.main_status is not None or self.survivors
        for summary in (self.forwards, self.signal_events):
            summary.flush(time.monotonic())  # what was counted is logged before the report
        orphaned, unread = self.ledger.entries(time.time()) if self.ledger is not None else ([], 0)
        for job in orphaned:
            self.log.warning("graceshell.orphaned_job", **job)
        if unread:
            self.log.warning("graceshell.orphaned_jobs_unread", count=unread, read=len(orphaned),
                             reason="too many ledger files to read before the platform's deadline")
        report = build_report(
            plan=self.plan, pid=self.pid, status=self.main_status, stop_signal=self.stop_signal,
            first_signal=self.first_signal, steps_fired=self.steps_fired,
            kill_fired=self.kill_fired_at is not None, killed=self.killed, survivors=self.survivors,
            uptime_s=time.monotonic() - self.started,
            shutdown_s=time.monotonic() - self.stop_at if self.stop_at is not None else None,
            reaped_orphans=self.reaped_orphans, orphaned_jobs=orphaned, orphaned_jobs_unread=unread)
        troubled = report["outcome"] in ("killed", "escalated", "crashed") or self.survivors or orphaned
        (self.log.warning if troubled else self.log.info)("graceshell.exit", **report)
        if orphaned and self.plan.on_orphans:  # none read means none left: at least one is always read
            from graceshell.engine.hooks import run_on_orphans

            run_on_orphans(self.plan.on_orphans, {"process": self.plan.name, **report}, self._hook_time(),
                           self.log)
        exit_code = report["exit_code"]
        assert isinstance(exit_code, int)
        return exit_code

    def _hook_time(self) -> float:
        """What is left before the platform's deadline (or a fixed bound without one)."""
        if self.stop_at is None or self.plan.platform_timeout is None:
            return HOOK_TIMEOUT_WITHOUT_PLATFORM
        deadline = self.stop_at + self.plan.platform_timeout - HOOK_MARGIN
        return max(0.0, deadline - time.monotonic())


def run(plan: RunPlan, log_format: str = "auto", log_level: str = "info") -> int:
    """Supervise `plan`, logging in `log_format` from `log_level` up; returns
    graceshell's exit status. OSError when the command cannot be started (the
    caller maps it to 126/127)."""
    return Supervisor(plan, log_format, log_level).run()

