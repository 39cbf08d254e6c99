"""`graceshell start`: every Procfile process at once, each under its own
`graceshell run`, with prefixed output and one stop for all.

One event loop, as in `run`: a selector over the children's output pipes,
their pidfds and the signal wakeup pipe; the only timeout is the next
restart. Output is read in whole lines per process and written out one
line at a time, so lines from two processes never interleave; a process that
floods its output is slowed by the pipe (nothing is dropped, and at most one
partial line per process is held).

The rules of a supervisor: a stop signal stops every process in parallel,
each with its own ladder, inside the one budget; a second one escalates them
all. A process that exits on its own stops the others (honcho's rule),
unless its `restart` is `on-failure` or `always`: then it is restarted after
1 s, 2 s, 4 s ... (at most 30 s; back to 1 s once it has run for 10 s), and
given up on after `restart_limit` restarts within a minute, like an OTP
supervisor's intensity and period.

One rule for graceshell's events: start's own and every process's (its
`graceshell run`'s and the integrations' inside the worker) go to start's
stderr, in the chosen log format, each with the process name as a key (in
JSON mode every line is a JSON object, with no prefix); only the workers'
own output goes to stdout, prefixed.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import time

from graceshell.engine.report import shell_status
from graceshell.errors import INTERNAL_ERROR_EXIT
from graceshell.signals import forwardable_signals, read_signals, signal_name, wakeup_pipe

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import BinaryIO

    from structlog.typing import FilteringBoundLogger as Logger

    from graceshell.engine.guard import Guard

# Read by the fleet endpoint of a restarted process (graceshell.fleet.services).
RESTARTS_ENV = "GRACESHELL_RESTARTS"
BASE_PORT = 5000
PORT_STEP_PER_TYPE = 100
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0
BACKOFF_RESET_AFTER = 10.0  # a run this long resets the backoff
RESTART_PERIOD = 60.0
DEFAULT_RESTART_LIMIT = 5
MAX_PARTIAL_LINE = 64 * 1024  # a longer line is written out in pieces rather than held
# How a graceshell event line begins in each log format (the console's after
# its timestamp and level, colours taken out).
_EVENT_START = {"json": b'{"event": "graceshell.', "logfmt": b"event=graceshell."}
_CONSOLE_EVENT = re.compile(rb"^\S+ \[\s*\w+\s*\] graceshell\.")
_ANSI = re.compile(rb"\x1b\[[0-9;]*m")
_STOPS = frozenset({int(signal.SIGINT), int(signal.SIGTERM), int(signal.SIGQUIT)})
_COLOURS = ("36", "33", "32", "35", "34", "31", "96", "93", "92", "95")


class Instance:
    """One running copy of a process type: `worker.2`."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], restart: str, restart_limit: int,
                 colour: str) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.restart = restart
        self.restart_limit = restart_limit
        self.colour = colour
        self.proc: subprocess.Popen[bytes] | None = None
        self.pidfd: int | None = None
        self.guard: Guard | None = None  # TERMs this process's graceshell if `start` dies first
        # stdout and stderr each have their own pipe (and partial line): a
        # program's buffered stdout must not be cut by a line on its stderr.
        self.outputs: dict[int, bytes] = {}
        self.stderr_fd: int | None = None  # where its graceshell's events come from
        self.started_at = 0.0
        self.backoff = BACKOFF_FIRST
        self.restart_times: list[float] = []
        self.restart_at: float | None = None
        self.exit_code: int | None = None
        self.restarts = 0
        self.gave_up = False

    @property
    def running(self) -> bool:
        return self.proc is not None


class Starter:
    def __init__(self, instances: list[Instance], log: Logger, out: BinaryIO, colour: bool,
                 events: BinaryIO | None = None, event_format: str = "json") -> None:
        self.instances = instances
        self.log = log
        self.out = out
        self.events = events  # where the processes' graceshell events go (start's stderr); None: with the output
        self.event_format = event_format
        self.colour = colour
        self.width = max(len(i.name) for i in instances)
        self.selector = selectors.DefaultSelector()
        self.stopping = False
        self.stop_requests = 0
        self.cause: Instance | None = None  # the process whose exit stopped the others

    # -- output ------------------------------------------------------------------

    def _prefix(self, instance: Instance) -> bytes:
        stamp = time.strftime("%H:%M:%S")
        name = instance.name.ljust(self.width)
        if self.colour:
            return f"\033[{instance.colour}m{stamp} {name} |\033[0m ".encode()
        return f"{stamp} {name} | ".encode()

    def _emit(self, instance: Instance, lines: list[bytes], stream: BinaryIO | None = None) -> None:
        prefix = self._prefix(instance)
        data = b"".join(prefix + line + b"\n" for line in lines)
        self._write(stream or self.out, data)

    @staticmethod
    def _write(stream: BinaryIO, data: bytes) -> None:
        try:
            stream.write(data)  # one write per batch of whole lines: never interleaved
            stream.flush()
        except (OSError, ValueError):
            pass

    def _event_line(self, instance: Instance, line: bytes) -> bytes | None:
        """A graceshell event as start writes it (the process name a key), or None for the worker's own line."""
        fmt = self.event_format
        if fmt == "json" and line.startswith(_EVENT_START["json"]):
            import json

            try:
                event = json.loads(line)
            except ValueError:
                return None
            event = {"event": event.pop("event"), "process": event.pop("process", instance.name), **event}
            return json.dumps(event, default=str).encode()
        if fmt == "logfmt" and line.startswith(_EVENT_START["logfmt"]):
            if b" process=" in line:
                return line
            name, _, rest = line.partition(b" ")
            return b"%s process=%s %s" % (name, instance.name.encode(), rest)
        if fmt == "console" and _CONSOLE_EVENT.match(_ANSI.sub(b"", line)):
            return self._prefix(instance) + line
        return None

    def _emit_stderr(self, instance: Instance, lines: list[bytes]) -> None:
        """A process's stderr: graceshell's events to start's, the rest with the output."""
        if self.events is None:
            self._emit(instance, lines)
            return
        output: list[bytes] = []
        for line in lines:
            event = self._event_line(instance, line)
            if event is None:
                output.append(line)
                continue
            if output:
                self._emit(instance, output)
                output = []
            self._write(self.events, event + b"\n")
        if output:
            self._emit(instance, output)

    def _read(self, instance: Instance, fd: int, *, draining: bool = False) -> bool:
        """Read what the process wrote on `fd`; False at end of file (or, draining, when nothing is left)."""
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return not draining
        if not data:
            return False
        lines = (instance.outputs[fd] + data).split(b"\n")
        partial = lines.pop()
        if len(partial) > MAX_PARTIAL_LINE:
            lines.append(partial)
            partial = b""
        instance.outputs[fd] = partial
        if lines:
            (self._emit_stderr if fd == instance.stderr_fd else self._emit)(instance, lines)
        return True

    # -- processes -----------------------------------------------------------------

    def _spawn(self, instance: Instance) -> None:
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        # The child starts with the stop signals blocked (the mask survives
        # exec), so a stop sent while it is still starting waits, pending,
        # until its graceshell catches it: it can neither kill it before it has
        # a report to write nor be lost.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
        try:
            # The restarts so far, for the process's own /metrics (its graceshell cannot know them).
            env = {**instance.env, RESTARTS_ENV: str(instance.restarts)} if instance.restarts else instance.env
            instance.proc = subprocess.Popen(instance.argv, stdin=subprocess.DEVNULL, stdout=out_write,
                                             stderr=err_write, env=env, start_new_session=True)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(out_write)
            os.close(err_write)
        instance.stderr_fd = err_read
        for fd in (out_read, err_read):
            os.set_blocking(fd, False)
            instance.outputs[fd] = b""
            self.selector.register(fd, selectors.EVENT_READ, ("output", instance))
        instance.started_at = time.monotonic()
        instance.restart_at = None
        try:
            instance.pidfd = os.pidfd_open(instance.proc.pid)
            self.selector.register(instance.pidfd, selectors.EVENT_READ, ("exit", instance))
        except (AttributeError, OSError):
            instance.pidfd = None  # SIGCHLD wakes the loop instead
        # A kill -9 of `start` must not leave its graceshells running on their
        # own: each one's guard sends it TERM, a stop with its own ladder.
        from graceshell.engine.guard import start as start_guard

        instance.guard = start_guard(instance.proc.pid, instance.pidfd, signal.SIGTERM)

    @staticmethod
    def _stop_guard(instance: Instance) -> None:
        if instance.guard is not None:
            instance.guard.stop()
            instance.guard = None

    def _close_output(self, instance: Instance, fd: int) -> None:
        partial = instance.outputs.pop(fd)
        if partial:
            (self._emit_stderr if fd == instance.stderr_fd else self._emit)(instance, [partial])
        self.selector.unregister(fd)
        os.close(fd)

    def _signal_all(self, signum: int) -> None:
        for instance in self.instances:
            if instance.proc is not None and instance.proc.poll() is None:
                try:
                    instance.proc.send_signal(signum)
                except ProcessLookupError:
                    pass

    def _stop_all(self, signum: int, reason: str) -> None:
        self.stopping = True
        for instance in self.instances:
            instance.restart_at = None  # no restarts once stopping
        self.log.info("graceshell.stop_all", signal=signal_name(signum), reason=reason)
        self._signal_all(signum)

    def _on_exit(self, instance: Instance, now: float) -> None:
        assert instance.proc is not None
        self._stop_guard(instance)
        code = shell_status(instance.proc.wait())
        if instance.pidfd is not None:
            self.selector.unregister(instance.pidfd)
            os.close(instance.pidfd)
            instance.pidfd = None
        for fd in list(instance.outputs):  # what is left in the pipes belongs to this run
            while self._read(instance, fd, draining=True):
                pass
            self._close_output(instance, fd)
        instance.proc, instance.exit_code = None, code
        ran = now - instance.started_at
        if self.stopping:
            return
        wants_restart = instance.restart == "always" or (instance.restart == "on-failure" and code != 0)
        if wants_restart:
            if ran >= BACKOFF_RESET_AFTER:
                instance.backoff = BACKOFF_FIRST
            instance.restart_times = [t for t in instance.restart_times if now - t < RESTART_PERIOD]
            if len(instance.restart_times) < instance.restart_limit:
                instance.restart_times.append(now)
                instance.restart_at = now + instance.backoff
                self.log.warning("graceshell.restart", process=instance.name, exit_code=code, ran_s=round(ran, 3),
                                 in_s=instance.backoff, restarts_in_period=len(instance.restart_times))
                instance.backoff = min(instance.backoff * 2, BACKOFF_MAX)
                return
            instance.gave_up = True
            self.log.error("graceshell.give_up", process=instance.name, exit_code=code,
                           restarts=len(instance.restart_times), period_s=RESTART_PERIOD)
        self.cause = instance
        self._stop_all(signal.SIGTERM, reason=f"{instance.name} exited with {code}")

    # -- the loop -------------------------------------------------------------------

    def run(self) -> int:
        read_fd = wakeup_pipe()
        stops = set(_STOPS)
        for signum in forwardable_signals() | {int(signal.SIGCHLD)}:
            signal.signal(signum, lambda *_: None)
        self.selector.register(read_fd, selectors.EVENT_READ, ("signal", None))
        for instance in self.instances:
            self._spawn(instance)
        self.log.info("graceshell.start_all", processes=[i.name for i in self.instances])
        try:
            self._loop(read_fd, stops)
        except Exception as exc:  # a bug of ours must not leave the processes running
            self.log.error("graceshell.internal_error", error=repr(exc))
            self._kill_everything()
            return INTERNAL_ERROR_EXIT
        return self._summary()

    def _kill_everything(self) -> None:
        """SIGKILL each graceshell run and its tree. tree.signal_descendants
        lists the whole tree before it signals anyone: a dead graceshell's
        descendants would go to init, out of reach."""
        from graceshell.engine import tree

        for instance in self.instances:
            self._stop_guard(instance)
        tree.signal_descendants(signal.SIGKILL, until_gone=True)
        for instance in self.instances:
            if instance.proc is not None:
                instance.proc.wait()

    def _loop(self, read_fd: int, stops: set[int]) -> None:
        while True:
            due = [i.restart_at for i in self.instances if i.restart_at is not None]
            timeout = max(0.0, min(due) - time.monotonic()) if due else None
            for key, _ in self.selector.select(timeout):
                kind, instance = key.data
                if kind == "signal":
                    for signum in read_signals(read_fd):
                        if signum in stops:
                            self.stop_requests += 1
                            if not self.stopping:
                                self._stop_all(signum, reason=f"received {signal_name(signum)}")
                            else:  # a second request: every process escalates its own ladder
                                self._signal_all(signum)
                        elif signum != signal.SIGCHLD:
                            self._signal_all(signum)
                elif kind == "output":
                    if key.fd in instance.outputs and not self._read(instance, key.fd):
                        self._close_output(instance, key.fd)
                elif kind == "exit":
                    self._on_exit(instance, time.monotonic())
            now = time.monotonic()
            for instance in self.instances:
                if instance.pidfd is None and instance.proc is not None and instance.proc.poll() is not None:
                    self._on_exit(instance, now)
                if instance.restart_at is not None and now >= instance.restart_at and not self.stopping:
                    instance.restarts += 1
                    self._spawn(instance)
            if all(i.proc is None and i.restart_at is None for i in self.instances):
                return

    def _summary(self) -> int:
        if self.cause is not None:
            code = self.cause.exit_code or 0
        else:
            # Stopped by a signal: fine when each process ended well; else the first failure.
            bad = [i.exit_code for i in self.instances if i.exit_code not in (0, 128 + signal.SIGTERM,
                                                                              128 + signal.SIGINT)]
            code = bad[0] if bad else 0
        (self.log.info if code == 0 else self.log.warning)("graceshell.summary", exit_code=code,
                     cause=self.cause.name if self.cause else None,
                     processes=[{"process": i.name, "exit_code": i.exit_code, "restarts": i.restarts,
                                 "gave_up": i.gave_up} for i in self.instances])
        return code if isinstance(code, int) else 1


def parse_concurrency(text: str | None, types: list[str]) -> dict[str, int]:
    """`worker=2,web=1` -> counts; types not named run once (0 leaves one out)."""
    from graceshell.errors import UsageError

    counts = {name: 1 for name in types}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, sep, number = item.partition("=")
        if not sep or not number.strip().isdigit():
            raise UsageError(f"--concurrency: {item!r} is not TYPE=N (e.g. worker=2)")
        if name.strip() not in counts:
            raise UsageError(f"--concurrency: no process type {name.strip()!r} (types: {', '.join(types)})")
        counts[name.strip()] = int(number)
    return counts


def base_port(environ: Mapping[str, str]) -> int:
    """The first instance's port: $PORT, as honcho and foreman read it, else BASE_PORT."""
    from graceshell.errors import UsageError, shown

    text = environ.get("PORT", "")
    if not text:
        return BASE_PORT
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise UsageError(f"$PORT is {shown(text)}: set it to a port number, or pass --port")
    return int(text)


def colour_for(index: int) -> str:
    return _COLOURS[index % len(_COLOURS)]

