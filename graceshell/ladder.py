"""The escalation ladder: which signal the worker gets when, after a stop.

A ladder is a list of steps, each an offset from the first stop signal and a
signal. The first step (at 0 s) is normally "the stop signal as received,
after --remap"; the last is always KILL, which takes down the whole tree.
Offsets may be written relative to the budget (`budget-5s`), which is how
presets say "cold shutdown five seconds before the end".
"""

from __future__ import annotations

import signal
from collections import namedtuple

from graceshell.durations import format_duration, parse_duration
from graceshell.errors import shown
from graceshell.signals import parse_signal, signal_name


class Step(namedtuple("Step", "at signal")):
    """One rung: `signal` to the worker `at` seconds after the first stop signal."""

    __slots__ = ()
    at: float
    signal: int | None  # None: the received stop signal, remapped


class StepSpec(namedtuple("StepSpec", "at signal")):
    """A step as written, before the budget is known."""

    __slots__ = ()
    at: str  # "20s", "budget", "budget-5s"
    signal: str | int


class LadderError(ValueError):
    """A problem with one step (`index`, 0-based) or the ladder as a whole (None)."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


def parse_ladder_spec(spec: str) -> list[StepSpec]:
    """`TERM@0s,QUIT@budget-5s,KILL@25s` -> step specs (not yet checked against a budget)."""
    steps = []
    for index, item in enumerate(part.strip() for part in spec.split(",")):
        sig, sep, at = item.partition("@")
        if not sep or not sig.strip() or not at.strip():
            raise LadderError(f"step {shown(item)} is not SIGNAL@OFFSET (e.g. QUIT@20s)", index)
        steps.append(StepSpec(at.strip(), sig.strip()))
    return steps


def resolve_offset(at: str | int | float, budget: float) -> float:
    """Seconds for `20s`, `budget` or `budget-5s`."""
    if isinstance(at, str) and at.strip().lower().startswith("budget"):
        rest = at.strip()[len("budget"):].strip()
        if not rest:
            return budget
        if not rest.startswith("-"):
            raise ValueError(f"offset {shown(at)}: write budget-DURATION, e.g. budget-5s")
        return max(0.0, budget - parse_duration(rest[1:]))
    return parse_duration(at)


def build_ladder(specs: list[StepSpec] | None, budget: float) -> tuple[Step, ...]:
    """The effective ladder: checked, with the implicit first and final steps added."""
    steps: list[Step] = []
    for index, spec in enumerate(specs or ()):
        try:
            steps.append(Step(resolve_offset(spec.at, budget), parse_signal(spec.signal)))
        except ValueError as exc:
            raise LadderError(str(exc), index) from None
    for index, step in enumerate(steps):
        if index and step.at < steps[index - 1].at:
            raise LadderError(
                f"{_show(step)} comes before the previous step {_show(steps[index - 1])}; "
                "list steps in time order", index)
        if step.at > budget:
            raise LadderError(
                f"{_show(step)} is after the budget ({format_duration(budget)}); "
                "raise --budget or move the step", index)
        if step.signal == signal.SIGKILL and index != len(steps) - 1:
            raise LadderError(f"{_show(step)} must be the last step: KILL ends the ladder", index)
    if not steps or steps[0].at > 0:
        steps.insert(0, Step(0.0, None))
    if steps[-1].signal != signal.SIGKILL:
        steps.append(Step(budget, signal.SIGKILL))
    return tuple(steps)


def describe(ladder: tuple[Step, ...], first_signal: int | None = None) -> list[dict[str, object]]:
    """The ladder as report data: [{"at": 0.0, "signal": "TERM"}, ...]."""
    return [
        {"at": round(step.at, 3), "signal": _label(step.signal if step.signal is not None else first_signal)}
        for step in ladder
    ]


def _label(signum: int | None) -> str:
    return signal_name(signum) if signum is not None else "(as received)"


def _show(step: Step) -> str:
    return f"{_label(step.signal)}@{format_duration(step.at)}"
