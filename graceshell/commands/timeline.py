"""The stop as a picture: what happened when, on a bar from the stop signal
to the platform's deadline.

`drill` collects the events (its own stop and the platform's SIGKILL,
graceshell's log lines as they arrive, the job ledger's changes) as plain
dicts, `{"t": seconds after the stop, "what": ..., "kind": ...}`, which go
into its JSON verdict as they are; `render` draws them, one line per event:

     0.00s  |*.......................................|  stop: TERM to every process (platform heroku)
     4.40s  |======================*.................|  QUIT to the worker: cold step
     8.00s  |.......................................o|  platform's SIGKILL at 8s: not needed

The filled part of a bar is the time gone by at that event; an event that
was planned but not needed (a later step, a KILL) is a hollow mark at its
planned time. On a terminal the bar is drawn with block characters and
colour (none when NO_COLOR is set); anywhere else it is plain ASCII.
"""

from __future__ import annotations

from graceshell.durations import format_duration

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from typing import Any

BAR_WIDTH = 40

# kind -> ANSI colour on a terminal: what went well, what was cut, what was only planned.
_COLOURS = {"stop": "1", "step": "33", "job": "32", "cut": "31", "exit": "36", "kill": "31", "deadline": "35",
            "planned": "2"}


def event(t: float, what: str, kind: str, *, fired: bool = True) -> dict[str, Any]:
    return {"t": round(max(t, 0.0), 3), "what": what, "kind": kind, "fired": fired}


def render(events: list[dict[str, Any]], deadline: float, *, tty: bool, colour: bool | None = None) -> list[str]:
    """One line per event, in time order, on a bar from 0 to `deadline`;
    `colour` defaults to `tty`."""
    colour = tty if colour is None else colour
    if not events:
        return []
    scale = deadline if deadline > 0 else max(e["t"] for e in events) or 1.0
    label_width = max(len(_when(e["t"])) for e in events)
    lines = []
    for item in sorted(events, key=lambda e: (e["t"], not e["fired"])):
        bar = _bar(item["t"], scale, fired=item["fired"], tty=tty)
        text = item["what"]
        if colour:
            code = _COLOURS.get(item["kind"] if item["fired"] else "planned", "0")
            text = f"\x1b[{code}m{text}\x1b[0m"
        lines.append(f"  {_when(item['t']):>{label_width}}  {bar}  {text}")
    return lines


def summary(used: float | None, deadline: float) -> str:
    if used is None or deadline <= 0:
        return ""
    return f"used {used:.1f}s of the {format_duration(deadline)} grace period " \
           f"({min(used / deadline, 9.99):.0%})"


def _when(t: float) -> str:
    return f"{t:.2f}s"


def _bar(t: float, scale: float, *, fired: bool, tty: bool) -> str:
    position = min(BAR_WIDTH - 1, int(round(t / scale * (BAR_WIDTH - 1)))) if scale else 0
    full, empty, edge = ("\u2588", "\u00b7", "\u2502") if tty else ("=", ".", "|")
    mark = ("\u25cf" if fired else "\u25cb") if tty else ("*" if fired else "o")
    filled = full if fired else empty
    return edge + filled * position + mark + empty * (BAR_WIDTH - 1 - position) + edge
