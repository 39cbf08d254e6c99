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
from graceshell.ladder import LadderError, Step, StepSpec, build_ladder
from graceshell.platforms import PLATFORMS, Platform, default_budget, detect_platform, platform_timeout
from graceshell.signals import DEFAULT_STOP_SIGNALS

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from collections.abc import Mapping

SECOND_SIGNAL_POLICIES = ("escalate", "forward", "ignore")
DEFAULT_LINGER = 2.0


class RunPlan:
    """What to run and how to stop it. Built by make_plan, read by the supervisor."""

    __slots__ = ("argv", "name", "ladder", "budget", "platform", "platform_source", "platform_timeout",
                 "stop_signals", "remap", "second_signal", "linger", "env")

    def __init__(self, *, argv: list[str], name: str, ladder: tuple[Step, ...], budget: float,
                 platform: Platform, platform_source: str, platform_timeout: float | None,
                 stop_signals: frozenset[int], remap: dict[int, int], second_signal: str = "escalate",
                 linger: float = DEFAULT_LINGER, env: dict[str, str] | None = None) -> None:
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
        self.env = env  # None: graceshell's own environment

    @property
    def kill_at(self) -> float:
        """Offset of the final KILL of the whole tree."""
        return self.ladder[-1].at

    def first_signal(self, received: int) -> int:
        """What the worker gets at t=0 for a stop signal `received`.

        An explicit remap of that very signal wins; then a signal the ladder
        names for its first step; then the signal as received.
        """
        if received in self.remap:
            return self.remap[received]
        return self.ladder[0].signal if self.ladder[0].signal is not None else received


def make_plan(
    argv: list[str],
    *,
    name: str | None = None,
    platform: str | None = None,
    platform_timeout_s: float | None = None,
    budget: float | None = None,
    ladder: list[StepSpec] | None = None,
    stop_signals: frozenset[int] | None = None,
    remap: dict[int, int] | None = None,
    second_signal: str = "escalate",
    linger: float = DEFAULT_LINGER,
    environ: Mapping[str, str] | None = None,
) -> RunPlan:
    """Resolve platform, timeout, budget and ladder; UsageError on any conflict."""
    environ = os.environ if environ is None else environ
    if not argv:
        raise UsageError("no command to run (write: graceshell run -- COMMAND [ARG]...)")
    if platform is None:
        chosen, source = detect_platform(environ)
    elif platform in PLATFORMS:
        chosen, source = PLATFORMS[platform], "flag"
    else:
        raise UsageError(f"--platform: unknown platform {platform!r} (known: {', '.join(PLATFORMS)})")
    timeout = platform_timeout_s if platform_timeout_s is not None else platform_timeout(chosen, environ)
    if budget is None:
        budget = default_budget(timeout)
    elif timeout is not None and budget >= timeout and timeout > 0:
        raise UsageError(
            f"--budget {format_duration(budget)} must be shorter than the platform timeout "
            f"{format_duration(timeout)} ({chosen.name}): graceshell must finish the kill before the platform does")
    elif timeout == 0 and budget > 0:
        raise UsageError(f"--budget {format_duration(budget)}: the {chosen.name} platform timeout is 0s, "
                         "so the budget must be 0s (or set --platform-timeout)")
    try:
        steps = build_ladder(ladder, budget)
    except LadderError as exc:
        where = f" step {exc.index + 1}" if exc.index is not None else ""
        raise UsageError(f"--ladder{where}: {exc}") from None
    if second_signal not in SECOND_SIGNAL_POLICIES:
        raise UsageError(f"--second-signal: {second_signal!r} is not one of {', '.join(SECOND_SIGNAL_POLICIES)}")
    stops = stop_signals if stop_signals is not None else frozenset(int(s) for s in DEFAULT_STOP_SIGNALS)
    if signal.SIGKILL in stops or signal.SIGSTOP in stops:
        raise UsageError("--stop-signals: KILL and STOP cannot be caught")
    return RunPlan(
        argv=list(argv),
        name=name or os.path.basename(argv[0]),
        ladder=steps,
        budget=budget,
        platform=chosen,
        platform_source=source,
        platform_timeout=timeout,
        stop_signals=stops,
        remap=dict(remap or {}),
        second_signal=second_signal,
        linger=linger,
    )
