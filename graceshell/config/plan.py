"""A run plan: every decision about one supervised worker, made before it starts.

The CLI and the config layer build a RunPlan; the supervisor only executes
it. All checks that can fail with a usage error happen here, before any
process is spawned.
"""

from __future__ import annotations

import os
import signal

from graceshell.durations import format_duration
from graceshell.errors import UsageError
from graceshell.config.ladder import DEFAULT_COLD_FLOOR, LadderError, Step, build_ladder, cold_reserve
from graceshell.config.platforms import (BROADCASTS, PLATFORMS, Platform, default_budget, detect_platform,
                                        platform_timeout)
from graceshell.config.settings import Origin, Setting, value_of
from graceshell.signals import DEFAULT_STOP_SIGNALS, FAULT_SIGNALS, UNCATCHABLE, signal_name

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from collections.abc import Mapping

SECOND_SIGNAL_POLICIES = ("escalate", "forward", "ignore")
DEFAULT_LINGER = 2.0


class RunPlan:
    """What to run and how to stop it. Built by make_plan, read by the supervisor."""

    __slots__ = ("argv", "name", "ladder", "budget", "platform", "platform_source", "platform_timeout",
                 "stop_signals", "remap", "second_signal", "linger", "env", "preset", "on_orphans", "cold_reserve",
                 "cold_floor", "parent_death_signal", "clean_exit", "http", "interruption_notices", "metadata_url")

    def __init__(self, *, argv: list[str], name: str, ladder: tuple[Step, ...], budget: float,
                 platform: Platform, platform_source: str, platform_timeout: float | None,
                 stop_signals: frozenset[int], remap: dict[int, int], second_signal: str = "escalate",
                 linger: float = DEFAULT_LINGER, env: dict[str, str] | None = None, preset: str = "generic",
                 on_orphans: str | None = None, cold_reserve: float | None = None,
                 cold_floor: float = DEFAULT_COLD_FLOOR, parent_death_signal: int | None = None,
                 clean_exit: bool = False, http: tuple[str, int] | None = None,
                 interruption_notices: str | None = None, metadata_url: str | None = None) -> None:
        self.argv = argv
        self.name = name
        self.ladder = ladder
        self.budget = budget
        self.platform = platform
        self.platform_source = platform_source  # how the platform was chosen: "flag", "env DYNO", ...
        self.platform_timeout = platform_timeout
        self.stop_signals = stop_signals
        self.remap = remap
        self.second_signal = second_signal
        self.linger = linger
        self.env = env  # added to graceshell's own environment
        self.preset = preset
        self.on_orphans = on_orphans  # command run with the orphan report on stdin
        self.cold_reserve = cold_reserve  # what a `budget-reserve` step keeps before the final KILL
        self.cold_floor = cold_floor  # the least the framework's cold shutdown needs (the preset's measure)
        # What graceshell's guard sends the worker if graceshell dies without
        # stopping it (kill -9, the OOM killer); by default the warm shutdown's signal.
        self.parent_death_signal = parent_death_signal if parent_death_signal is not None else self.warm_signal()
        # A clean stop exits 0 (tini -e): for service managers that count the
        # 143 of a worker that died of the forwarded TERM as a failure.
        self.clean_exit = clean_exit
        # The fleet options, all off by default: the endpoint's (host, port);
        # the cloud whose interruption notices start a stop, and its metadata base URL.
        self.http = http
        self.interruption_notices = interruption_notices
        self.metadata_url = metadata_url

    @property
    def kill_at(self) -> float:
        """Offset of the final KILL of the whole tree."""
        return self.ladder[-1].at

    def warm_phase(self) -> float:
        """Seconds from the stop to the first later step: the time jobs get to finish."""
        return min((step.at for step in self.ladder[1:] if step.at > 0), default=0.0)

    def warm_signal(self) -> int:
        """The last signal the ladder sends at 0 s for the platform's stop: the
        one that starts the worker's warm shutdown (sidekiq: TSTP, then TERM)."""
        warm = self.first_signal(self.platform.stop_signal)
        for step in self.ladder[1:]:
            if step.at > 0:
                break
            if step.signal is not None:
                warm = step.signal
        return warm

    def notice_signal(self) -> int:
        """The stop signal an interruption notice stands for: the platform's, when it is one of ours."""
        if self.platform.stop_signal in self.stop_signals:
            return int(self.platform.stop_signal)
        return int(signal.SIGTERM) if signal.SIGTERM in self.stop_signals else min(self.stop_signals)

    def first_signal(self, received: int) -> int:
        """What the worker gets at t=0 for a stop signal `received`.

        An explicit remap of that very signal wins; then a signal the ladder
        names for its first step; then the signal as received.
        """
        if received in self.remap:
            return self.remap[received]
        return self.ladder[0].signal if self.ladder[0].signal is not None else received


def _where(settings: Mapping[str, Setting], key: str, flag: str) -> Origin:
    setting = settings.get(key)
    return setting.origin if setting is not None else Origin(flag)


def resolve_platform(settings: Mapping[str, Setting], environ: Mapping[str, str]
                     ) -> tuple[Platform, str, float | None, Origin]:
    """The platform, how it was chosen, its timeout, and where the timeout came from."""
    name = value_of(settings, "platform")
    if name is None or name == "auto":
        chosen, source = detect_platform(environ)
    elif name in PLATFORMS:
        chosen, source = PLATFORMS[name], str(settings["platform"].origin)
    else:
        raise UsageError(f"{settings['platform'].origin}: unknown platform {name!r} (known: {', '.join(PLATFORMS)})")
    broadcast = value_of(settings, "broadcast")
    if broadcast is not None and broadcast != chosen.broadcast:  # the deployment's own stop model
        if broadcast not in BROADCASTS:
            raise UsageError(f"{settings['broadcast'].origin}: {broadcast!r} is not one of {', '.join(BROADCASTS)}")
        chosen = chosen._replace(broadcast=broadcast)
    if "platform_timeout" in settings:
        return chosen, source, settings["platform_timeout"].value, settings["platform_timeout"].origin
    timeout = platform_timeout(chosen, environ)
    label = (f"${chosen.timeout_env}" if chosen.timeout_env and timeout != chosen.timeout
             else f"platform {chosen.name}")
    return chosen, source, timeout, Origin(label)


def make_plan(argv: list[str], settings: Mapping[str, Setting],
              environ: Mapping[str, str] | None = None) -> RunPlan:
    """Resolve platform, timeout, budget and ladder; UsageError naming the
    flag or config line at fault on any conflict."""
    environ = os.environ if environ is None else environ
    if not argv:
        raise UsageError("no command to run (write: graceshell run -- COMMAND [ARG]...)")
    chosen, source, timeout, _ = resolve_platform(settings, environ)
    budget = value_of(settings, "budget")
    if budget is None:
        budget = default_budget(timeout)
    elif timeout is not None and timeout > 0 and budget >= timeout:
        raise UsageError(
            f"{settings['budget'].origin}: budget {format_duration(budget)} must be shorter than the platform "
            f"timeout {format_duration(timeout)} ({chosen.name}): graceshell must finish its kill before the "
            "platform's")
    elif timeout == 0 and budget > 0:
        raise UsageError(f"{settings['budget'].origin}: the {chosen.name} platform timeout is 0s, so the budget "
                         "must be 0s (or set the platform timeout)")
    ladder_origin = _where(settings, "ladder", "--ladder")
    floor = value_of(settings, "cold_floor", DEFAULT_COLD_FLOOR)
    reserve = cold_reserve(budget, floor)
    try:
        steps = build_ladder(value_of(settings, "ladder"), budget, reserve)
    except LadderError as exc:
        where = ladder_origin.item(exc.index) if exc.index is not None else str(ladder_origin)
        raise UsageError(f"{where}: {exc}") from None
    second_signal = value_of(settings, "second_signal", "escalate")
    if second_signal not in SECOND_SIGNAL_POLICIES:
        raise UsageError(f"{settings['second_signal'].origin}: {second_signal!r} is not one of "
                         f"{', '.join(SECOND_SIGNAL_POLICIES)}")
    stops = value_of(settings, "stop_signals") or frozenset(int(s) for s in DEFAULT_STOP_SIGNALS)
    if stops & UNCATCHABLE:
        raise UsageError(f"{settings['stop_signals'].origin}: KILL and STOP cannot be caught")
    faults = sorted(signal_name(s) for s in stops & FAULT_SIGNALS)
    if faults:
        raise UsageError(f"{settings['stop_signals'].origin}: {', '.join(faults)} report a fault in the process "
                         "that gets them, not a request to stop; use TERM, INT, QUIT, HUP or a USR signal")
    death = value_of(settings, "parent_death_signal")
    if death == signal.SIGSTOP:
        raise UsageError(f"{settings['parent_death_signal'].origin}: STOP would leave the worker stopped with "
                         "nobody to continue it; use the warm shutdown's signal (the default) or KILL")
    return RunPlan(
        argv=list(argv),
        name=value_of(settings, "name") or os.path.basename(argv[0]),
        ladder=steps,
        budget=budget,
        platform=chosen,
        platform_source=source,
        platform_timeout=timeout,
        stop_signals=stops,
        remap=dict(value_of(settings, "remap", {})),
        second_signal=second_signal,
        linger=value_of(settings, "linger", DEFAULT_LINGER),
        env=value_of(settings, "env"),
        preset=value_of(settings, "preset", "generic"),
        on_orphans=value_of(settings, "on_orphans"),
        cold_reserve=reserve,
        cold_floor=floor,
        parent_death_signal=death,
        clean_exit=bool(value_of(settings, "clean_exit", False)),
        http=value_of(settings, "http"),
        interruption_notices=value_of(settings, "interruption_notices"),
        metadata_url=value_of(settings, "metadata_url"),
    )


def run_command_line(plan: RunPlan, config: str | None, *, log_format: str = "json",
                     env_files: list[str] | None = None) -> list[str]:
    """`graceshell run` with every resolved setting of `plan` spelled out as
    flags: how drill and start put a worker under its own graceshell."""
    import sys

    argv = [sys.executable, "-m", "graceshell", "run", "--log-format", log_format, "--name", plan.name,
            "--platform", plan.platform.name, "--budget", f"{plan.budget}s",
            "--second-signal", plan.second_signal, "--linger", f"{plan.linger}s",
            "--stop-signals", ",".join(signal_name(s) for s in sorted(plan.stop_signals))]
    if config:
        argv += ["--config", config]
    for file in env_files or ():
        argv += ["--env", file]
    if plan.platform_timeout is not None:
        argv += ["--platform-timeout", f"{plan.platform_timeout}s"]
    if plan.preset != "generic":
        # Its environment (RQ_WORKER_CLASS, RUBYOPT): the ladder below wins over its ladder.
        argv += ["--preset", plan.preset]
    steps = [f"{signal_name(step.signal)}@{step.at}s" for step in plan.ladder if step.signal is not None]
    if steps:
        argv += ["--ladder", ",".join(steps)]
    for source, target in plan.remap.items():
        argv += ["--remap", f"{signal_name(source)}:{signal_name(target)}"]
    if plan.on_orphans:
        argv += ["--on-orphans", plan.on_orphans]
    argv += ["--parent-death-signal", signal_name(plan.parent_death_signal)]
    if plan.clean_exit:
        argv.append("--clean-exit")
    if plan.http is not None:
        from graceshell.fleet.options import format_address

        argv += ["--http", format_address(plan.http)]
    if plan.interruption_notices is not None:
        argv += ["--interruption-notices", plan.interruption_notices]
    if plan.metadata_url is not None:
        argv += ["--metadata-url", plan.metadata_url]
    return [*argv, "--", *plan.argv]
