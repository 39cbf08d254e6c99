"""The escalation ladder: which signal the worker gets when, after a stop.

A ladder is a list of steps, each an offset from the first stop signal and a
signal. The first step (at 0 s) is normally "the stop signal as received,
after --remap"; the last is always KILL, which takes down the whole tree.
Offsets may be written relative to the budget (`budget-5s`), or as
`budget-reserve`: the cold reserve before the end, which scales with the
budget (cold_reserve below). That is how presets say "cold shutdown as late
as the framework allows".
"""

from __future__ import annotations

import signal
from collections import namedtuple

from graceshell.durations import format_duration, parse_duration, to_ms
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
    at: str  # "20s", "budget", "budget-5s", "budget-reserve"
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


# The cold reserve: the time kept between a `budget-reserve` step and the
# final KILL. A framework's cold shutdown (cancel, requeue, disconnect) takes
# a second or two, but the warm phase before it is what lets jobs finish, so
# the reserve is a quarter of the budget, never under the framework's
# measured need (its floor) and never over 5 s, which every framework here
# fits in with room to spare. On a budget too short for both, the warm phase
# keeps half of it: a job that cannot finish is requeued by the cold step
# either way, while a cold step on t=0 would leave no job a chance.
COLD_RESERVE_SHARE = 0.25
COLD_RESERVE_CAP = 5.0
DEFAULT_COLD_FLOOR = 2.0  # for a ladder of one's own that says budget-reserve
RESERVE = "reserve"


def cold_reserve(budget: float, floor: float | None = None) -> float:
    """Seconds between a `budget-reserve` step and the final KILL: a quarter
    of the budget between the framework's floor and 5 s, and never more than
    half the budget."""
    floor = DEFAULT_COLD_FLOOR if floor is None else floor
    return to_ms(min(budget / 2, max(floor, min(COLD_RESERVE_CAP, COLD_RESERVE_SHARE * budget))))


def budget_offset(at: str | int | float) -> float | str | None:
    """What a step written from the end keeps before the final KILL: seconds
    for `budget-5s` (0.0 for `budget`), RESERVE for `budget-reserve`; None
    for an absolute offset such as `20s`. ValueError when it is neither."""
    if not (isinstance(at, str) and at.strip().lower().startswith("budget")):
        return None
    rest = at.strip()[len("budget"):].strip()
    if not rest:
        return 0.0
    if not rest.startswith("-"):
        raise ValueError(f"offset {shown(at)}: write budget-DURATION (e.g. budget-5s) or budget-reserve")
    if rest[1:].strip().lower() == RESERVE:
        return RESERVE
    return parse_duration(rest[1:])


def resolve_offset(at: str | int | float, budget: float, reserve: float | None = None) -> float:
    """Seconds for `20s`, `budget`, `budget-5s` or `budget-reserve`."""
    kept = budget_offset(at)
    if kept is None:
        return parse_duration(at)
    if kept == RESERVE:
        kept = cold_reserve(budget) if reserve is None else reserve
    return to_ms(max(0.0, budget - kept))  # type: ignore[operator]


def build_ladder(specs: list[StepSpec] | None, budget: float, reserve: float | None = None) -> tuple[Step, ...]:
    """The effective ladder: checked, with the implicit first and final steps
    added; `reserve` is what `budget-reserve` keeps before the end."""
    steps: list[Step] = []
    for index, spec in enumerate(specs or ()):
        try:
            steps.append(Step(resolve_offset(spec.at, budget, reserve), parse_signal(spec.signal)))
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
