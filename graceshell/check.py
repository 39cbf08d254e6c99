"""`graceshell check`: validate config, Procfile and .env, and show what each
process will really get, with where every value comes from."""

from __future__ import annotations

import shlex

from graceshell.durations import format_duration
from graceshell.ladder import describe
from graceshell.plan import make_plan, resolve_platform
from graceshell.platforms import BROADCAST_ALL, PLATFORM_MARGIN
from graceshell.signals import signal_name

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from graceshell.plan import RunPlan
    from graceshell.resolve import Sources
    from graceshell.settings import Setting

SHORT_GRACE = 10.0  # seconds: below this, say loudly that there is little room for a warm stop
BUILT_IN = "built-in"


def _from(settings: Mapping[str, Setting], key: str, fallback: str = BUILT_IN) -> str:
    setting = settings.get(key)
    return str(setting.origin) if setting is not None else fallback


def effective(process: str, source: str, argv: list[str], settings: Mapping[str, Setting],
              environ: Mapping[str, str]) -> dict[str, Any]:
    """One process's effective settings, each as {"value", "from"}, plus warnings."""
    plan = make_plan(argv, settings, environ)
    _, platform_source, _, timeout_origin = resolve_platform(settings, environ)
    if "budget" in settings:
        budget_from = str(settings["budget"].origin)
    elif plan.platform_timeout is None:
        budget_from = "built-in (no platform deadline)"
    else:
        budget_from = f"platform timeout - {format_duration(PLATFORM_MARGIN)}, at least 80% of it"
    stops = plan.stop_signals
    return {
        "process": process,
        "source": source,
        "command": argv,
        "preset": {"value": plan.preset, "from": _from(settings, "preset")},
        "platform": {"value": plan.platform.name, "from": platform_source},
        "platform_timeout_s": {"value": plan.platform_timeout, "from": str(timeout_origin)},
        "budget_s": {"value": plan.budget, "from": budget_from},
        "ladder": {"value": describe(plan.ladder), "from": _from(settings, "ladder")},
        "remap": {"value": {signal_name(k): signal_name(v) for k, v in plan.remap.items()},
                  "from": _from(settings, "remap")},
        "stop_signals": {"value": [signal_name(s) for s in sorted(stops)], "from": _from(settings, "stop_signals")},
        "second_signal": {"value": plan.second_signal, "from": _from(settings, "second_signal")},
        "linger_s": {"value": plan.linger, "from": _from(settings, "linger")},
        "on_orphans": {"value": plan.on_orphans, "from": _from(settings, "on_orphans")},
        # Names only: values of environment variables may be secrets.
        "env": {"value": sorted(plan.env or {}), "from": _from(settings, "env")},
        "warnings": warnings(plan),
    }


def warnings(plan: RunPlan) -> list[str]:
    found = []
    timeout = plan.platform_timeout
    if timeout is not None and timeout < SHORT_GRACE:
        found.append(f"the {plan.platform.name} platform kills {format_duration(timeout)} after its stop signal: "
                     f"a budget of {format_duration(plan.budget)} leaves little room for a warm shutdown; "
                     "raise the platform's timeout if you can")
    offsets = [step.at for step in plan.ladder]
    for index in range(1, len(plan.ladder) - 1):
        if offsets[index] == offsets[index - 1] and plan.ladder[index].signal != plan.ladder[index - 1].signal \
                and offsets[index] > 0:
            found.append(f"ladder steps {index} and {index + 1} fire together at {format_duration(offsets[index])}: "
                         "the budget is too short for the warm phase between them")
    if len(plan.ladder) > 2 and plan.ladder[-1].at - plan.ladder[-2].at < 1.0:  # `KILL@0s` is all one step
        found.append(f"only {format_duration(plan.ladder[-1].at - plan.ladder[-2].at)} between the last step "
                     "and the final KILL")
    if plan.platform.broadcast == BROADCAST_ALL:
        advice = {
            "celery": "graceshell's Celery integration handles it when graceshell is installed beside Celery "
                      "(`celery graceshell` says so); else import graceshell.integrations.celery in the app",
            "rq": "the rq preset runs graceshell.integrations.rq.Worker (unless -w or $RQ_WORKER_CLASS says "
                  "otherwise)",
        }.get(plan.preset, "its children must ignore that signal while a job finishes")
        found.append(f"{plan.platform.name} sends its stop signal to every process, the worker's children "
                     f"included: {advice}")
    found.extend(_sidekiq_timeout(plan))
    return found


def _sidekiq_timeout(plan: RunPlan) -> list[str]:
    """Sidekiq pushes unfinished jobs back at its own -t; that must end 8 s before the KILL."""
    if plan.preset != "sidekiq":
        return []
    words = plan.argv[2:] if plan.argv[:2] == ["sh", "-c"] else plan.argv
    if len(words) == 1 and words[0].startswith("exec "):
        words = shlex.split(words[0])
    timeout = 25.0  # Sidekiq's default
    for index, word in enumerate(words):
        if word in ("-t", "--timeout") and index + 1 < len(words):
            try:
                timeout = float(words[index + 1])
            except ValueError:
                return []
    room = plan.ladder[-1].at - 8.0
    if timeout > room:
        return [f"sidekiq's -t {format_duration(timeout)} does not fit: with a budget of "
                f"{format_duration(plan.ladder[-1].at)} use -t {format_duration(max(room, 0.0))} or less, "
                "so Sidekiq can requeue its jobs before the kill"]
    return []


def render_text(entries: list[dict[str, Any]], notes: list[str]) -> str:
    lines = []
    for entry in entries:
        lines.append(f"{entry['process']} ({entry['source']}): {shlex.join(entry['command'])}")
        rows = [
            ("preset", entry["preset"]["value"], entry["preset"]["from"]),
            ("platform", entry["platform"]["value"], entry["platform"]["from"]),
            ("platform timeout", _seconds(entry["platform_timeout_s"]["value"]), entry["platform_timeout_s"]["from"]),
            ("budget", _seconds(entry["budget_s"]["value"]), entry["budget_s"]["from"]),
            ("ladder", " ".join(f"{s['signal']}@{format_duration(s['at'])}" for s in entry["ladder"]["value"]),
             entry["ladder"]["from"]),
            ("remap", " ".join(f"{k}->{v}" for k, v in entry["remap"]["value"].items()) or "-",
             entry["remap"]["from"]),
            ("stop signals", ",".join(entry["stop_signals"]["value"]), entry["stop_signals"]["from"]),
            ("second signal", entry["second_signal"]["value"], entry["second_signal"]["from"]),
            ("linger", _seconds(entry["linger_s"]["value"]), entry["linger_s"]["from"]),
            ("on_orphans", entry["on_orphans"]["value"] or "-", entry["on_orphans"]["from"]),
            ("env", " ".join(entry["env"]["value"]) or "-", entry["env"]["from"]),
        ]
        width = max(len(str(value)) for _, value, _ in rows)
        for label, value, origin in rows:
            lines.append(f"  {label:<17}{str(value):<{width}}  ({origin})")
        lines.extend(f"  warning: {text}" for text in entry["warnings"])
        lines.append("")
    lines.extend(f"note: {text}" for text in notes)
    return "\n".join(lines).rstrip() + "\n"


def _seconds(value: float | None) -> str:
    return "none" if value is None else format_duration(value)


def check(sources: Sources, process_type: str | None, flags: Mapping[str, Setting],
          environ: Mapping[str, str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Effective settings of the chosen process, or of every Procfile process."""
    notes: list[str] = []
    targets: list[tuple[str, str, list[str]]] = []
    # (name, where it is defined, argv, graceshell.yml section)
    targets: list[tuple[str, str, list[str], str | None]] = []
    if process_type is not None:
        command = sources.process_command(process_type)
        procfile = sources.procfile
        targets.append((process_type, f"{procfile.path}:{procfile.lines[process_type]}", command, process_type))
    else:
        types = sources.procfile.processes if sources.has_procfile() else {}
        for name in types:
            where = f"{sources.procfile.path}:{sources.procfile.lines[name]}"
            targets.append((name, where, sources.process_command(name), name))
        # Every section is checked, also one that no Procfile line uses.
        for name in (sources.config.processes if sources.config is not None else {}):
            if name not in types:
                targets.append((name, f"{sources.config.path} only (graceshell run --name {name} -- ...)",
                                ["COMMAND"], name))
        if not types:
            notes.append(f"no {sources.procfile_path}: showing what `graceshell run -- COMMAND` gets")
            targets.append(("(run -- COMMAND)", "command line", ["COMMAND"], None))
    if sources.config is None:
        notes.append("no graceshell.yml: built-in settings, presets and flags only")
    entries = [effective(name, source, argv, sources.settings_for(section, flags), environ)
               for name, source, argv, section in targets]
    return entries, notes

