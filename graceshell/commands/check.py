"""`graceshell check`: validate config, Procfile and .env, and show what each
process will really get, with where every value comes from."""

from __future__ import annotations

import os
import shlex
import signal

from graceshell.durations import format_duration
from graceshell.config.ladder import (COLD_RESERVE_CAP, COLD_RESERVE_SHARE, RESERVE, budget_offset, cold_reserve,
                                      describe, resolve_offset)
from graceshell.config.plan import make_plan, resolve_platform
from graceshell.config.platforms import BROADCAST_ALL, PLATFORM_MARGIN, default_budget
from graceshell.config.presets import PRESETS
from graceshell.config.settings import value_of
from graceshell.signals import parse_signal, signal_name

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from graceshell.config.ladder import StepSpec
    from graceshell.config.plan import RunPlan
    from graceshell.config.resolve import Sources
    from graceshell.config.settings import Setting

# Platforms that broadcast by default but let the deployment choose graceshell
# alone as the receiver, and how.
_WHO_GETS_THE_SIGNAL = {
    "systemd": "with the default KillMode=control-group; KillMode=mixed in the unit sends it to graceshell alone: "
               "then say so with broadcast: pid1 (or --broadcast pid1)",
}
SHORT_GRACE = 10.0  # seconds: below this, say loudly that there is little room for a warm stop
BUILT_IN = "built-in"


def _from(settings: Mapping[str, Setting], key: str, fallback: str = BUILT_IN) -> str:
    setting = settings.get(key)
    return str(setting.origin) if setting is not None else fallback


def _address(address: tuple[str, int] | None) -> str | None:
    if address is None:
        return None
    from graceshell.fleet.options import format_address

    return format_address(address)


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
    specs: list[StepSpec] = list(value_of(settings, "ladder") or ())
    uses_reserve = any(_is_reserve(spec.at) for spec in specs)
    reserve_from = (f"{COLD_RESERVE_SHARE:.0%} of the budget, at least {format_duration(plan.cold_floor)}"
                    f" ({_from(settings, 'cold_floor')}), at most {format_duration(COLD_RESERVE_CAP)} "
                    "or half the budget")
    budget_origin = settings["budget"].origin if "budget" in settings else None
    errors = collapse_errors(plan, specs, budget_origin=budget_origin)
    warm = 0.0 if errors else plan.warm_phase()
    return {
        "process": process,
        "source": source,
        "command": argv,
        "preset": {"value": plan.preset, "from": _from(settings, "preset")},
        "platform": {"value": plan.platform.name, "from": platform_source},
        "broadcast": {"value": plan.platform.broadcast,
                      "from": _from(settings, "broadcast", f"platform {plan.platform.name}")},
        "platform_timeout_s": {"value": plan.platform_timeout, "from": str(timeout_origin)},
        "budget_s": {"value": plan.budget, "from": budget_from},
        "ladder": {"value": describe(plan.ladder), "from": _from(settings, "ladder")},
        # What a `budget-reserve` step keeps before the final KILL (None: no such step).
        "cold_reserve_s": {"value": round(plan.cold_reserve, 3) if uses_reserve else None,
                           "from": reserve_from if uses_reserve else "no budget-reserve step"},
        "warm_phase_s": {"value": round(warm, 3),
                         "from": f"{warm / plan.budget:.0%} of the budget" if plan.budget else "no budget"},
        "remap": {"value": {signal_name(k): signal_name(v) for k, v in plan.remap.items()},
                  "from": _from(settings, "remap")},
        "stop_signals": {"value": [signal_name(s) for s in sorted(stops)], "from": _from(settings, "stop_signals")},
        "second_signal": {"value": plan.second_signal, "from": _from(settings, "second_signal")},
        "linger_s": {"value": plan.linger, "from": _from(settings, "linger")},
        "on_orphans": {"value": plan.on_orphans, "from": _from(settings, "on_orphans")},
        "parent_death_signal": {"value": signal_name(plan.parent_death_signal),
                                "from": _from(settings, "parent_death_signal", "the warm shutdown's signal")},
        # Names only: values of environment variables may be secrets.
        "env": {"value": sorted(plan.env or {}), "from": _from(settings, "env")},
        "http": {"value": _address(plan.http), "from": _from(settings, "http", "off")},
        "interruption_notices": {"value": plan.interruption_notices,
                                 "from": _from(settings, "interruption_notices", "off")},
        "metadata_url": {"value": plan.metadata_url, "from": _from(settings, "metadata_url", "the provider's own")},
        "warnings": ((_short_reserve(plan, budget_origin) if uses_reserve and not errors else [])
                     + _not_on_path(argv, plan, environ) + warnings(plan)
                     + _ruby_integration(plan, settings, environ) + _rq_worker_class(plan, environ)
                     + _delayed_job_command(plan)),
        "errors": errors,
    }


# The stand-in command of a process that `check` knows no command for.
PLACEHOLDER = "COMMAND"
# Words a shell line may start with that are no program to look for on PATH.
_SHELL_BUILTINS = frozenset({"exec", "cd", "export", "set", "test", "[", ".", "source", "eval", "true", "false",
                             "echo", "printf", "trap", "ulimit", "umask", "wait", "read", "if", "for", "while"})


def _not_on_path(argv: list[str], plan: RunPlan, environ: Mapping[str, str]) -> list[str]:
    """The program the command starts, when it is not where `run` would look for it."""
    import re
    import shutil

    from graceshell.config.procfile import command_words

    if argv == [PLACEHOLDER]:
        return []
    words = command_words(argv)
    while words and re.match(r"[A-Za-z_][A-Za-z0-9_]*=", words[0]):  # `FOO=1 worker`: the program is worker
        words = words[1:]
    if not words or words[0] in _SHELL_BUILTINS:
        return []
    program = words[0]
    path = environ.get("PATH", (plan.env or {}).get("PATH", os.defpath))
    if shutil.which(program, path=path) is not None:
        return []
    if "/" in program:
        return [f"{program} does not exist or is not executable: `graceshell run` would exit 127 or 126"]
    return [f"{program} is not on PATH: `graceshell run` would exit 127 (install it, activate its virtualenv, "
            "or give its full path)"]


def _is_reserve(at: str | float) -> bool:
    return budget_offset(at) == RESERVE


def _budget_relative(at: str | float) -> bool:
    """`budget-5s` or `budget-reserve`: a step meant to come before the end, not at t=0."""
    return budget_offset(at) not in (None, 0.0)


def collapse_errors(plan: RunPlan, specs: list[StepSpec], *, budget_origin: object | None) -> list[str]:
    """A step written to come before the end that the budget pushed onto t=0:
    the cold signal then goes out with the warm one, and no job can finish."""
    collapsed = [spec for spec in specs if _budget_relative(spec.at) and parse_signal(spec.signal) != signal.SIGKILL
                 and resolve_offset(spec.at, plan.budget, plan.cold_reserve) == 0]
    if not collapsed:
        return []
    step = collapsed[0]
    platform = plan.platform
    timeout = format_duration(plan.platform_timeout or 0)
    fix = _fix(plan, str(step.at), budget_origin)
    return [f"{step.signal}@{step.at} falls on 0s: a budget of {format_duration(plan.budget)} ({platform.name}, "
            f"timeout {timeout}) leaves no warm phase, so the worker is told to cancel its jobs the moment it is "
            f"told to finish them; {fix}"]


def _short_reserve(plan: RunPlan, budget_origin: object | None) -> list[str]:
    """The budget gave the warm phase its half, and the cold step less than the framework needs."""
    need = plan.cold_floor
    reserve = plan.cold_reserve or 0.0
    if reserve >= need:
        return []
    return [f"the cold step gets {format_duration(round(reserve, 3))} before the final KILL, less than the "
            f"{format_duration(need)} the {plan.preset} preset's cold shutdown needs: it may be cut short by the "
            f"KILL (jobs are still reported); {_fix(plan, f'budget-{RESERVE}', budget_origin)}"]


def _fix(plan: RunPlan, at: str, budget_origin: object | None) -> str:
    """What to change for more room: the budget when it was set, else the platform's timeout setting."""
    platform = plan.platform
    if budget_origin is not None:
        return f"raise the budget ({budget_origin})"
    if platform.timeout_setting:
        needed = _timeout_for_room(at, plan.cold_floor)
        return f"raise {platform.timeout_setting}" + (f" to at least {format_duration(needed)}" if needed else "")
    return (f"{platform.name}'s timeout cannot be raised: give this worker a ladder of its own whose cold step "
            "fits (e.g. --ladder with an absolute offset)")


def _timeout_for_room(at: str, floor: float) -> float | None:
    """The shortest whole-second platform timeout whose default budget keeps
    what the step `at` asks for before the end, and as much again before it."""
    kept = budget_offset(at)
    wanted = floor if kept == RESERVE else kept
    for seconds in range(1, 301):
        budget = default_budget(float(seconds))
        kept = budget - resolve_offset(at, budget, cold_reserve(budget, floor))
        if kept >= wanted and budget - kept >= kept:
            return float(seconds)
    return None


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
            "sidekiq": "Sidekiq runs its jobs in threads of one process, and that TERM starts its warm shutdown",
            "delayed_job": "graceshell's delayed_job integration (loaded by the preset) keeps that TERM from "
                           "aborting the job in hand, whatever raise_signal_exceptions says",
        }.get(plan.preset) or _integration_advice(plan)
        advice = advice or "its children must ignore that signal while a job finishes"
        choice = _WHO_GETS_THE_SIGNAL.get(plan.platform.name)
        found.append(f"{plan.platform.name} sends its stop signal to every process, the worker's children "
                     f"included{f' ({choice})' if choice else ''}: {advice}")
    found.extend(_sidekiq_timeout(plan))
    return found


def _loads(argv: list[str], module: str) -> bool:
    """The command names graceshell's integration module (also inside `sh -c '...'`)."""
    return any(module in word.split() for word in argv)


# The frameworks whose integration is on the command line: graceshell's
# module, what the platform's broadcast does without it, and how to add it.
_COMMAND_LINE_INTEGRATIONS = {
    "dramatiq": ("graceshell.integrations.dramatiq", "a Dramatiq worker process takes a second TERM as 'exit now'",
                 "add the module to Dramatiq's: dramatiq app graceshell.integrations.dramatiq"),
    "huey": ("graceshell.integrations.huey", "Huey takes TERM as its immediate shutdown",
             "run python -m graceshell.integrations.huey in place of huey_consumer "
             "(or call graceshell.integrations.huey.install(huey))"),
    "arq": ("graceshell.integrations.arq", "arq cancels its running jobs at the first TERM",
            "run python -m graceshell.integrations.arq in place of arq"),
}


def _integration_advice(plan: RunPlan) -> str | None:
    if plan.preset not in _COMMAND_LINE_INTEGRATIONS:
        return None
    module, without, how = _COMMAND_LINE_INTEGRATIONS[plan.preset]
    if _loads(plan.argv, module):
        return f"the command runs {module}, which takes one warm stop until graceshell escalates"
    return f"{without}; {how}"


SIDEKIQ_DEFAULT_TIMEOUT = 25.0  # lib/sidekiq.rb DEFAULTS[:timeout]
# Manager#hard_shutdown: after the requeue, up to 3 s for `ensure` blocks; the
# sidekiq preset's cold step keeps that much before the KILL.
SIDEKIQ_ENSURE_GRACE = budget_offset(PRESETS["sidekiq"].ladder[-1][1])


def _sidekiq_timeout(plan: RunPlan) -> list[str]:
    """A -t of the user's own is kept by graceshell's Sidekiq integration: it
    must end 3 s before the KILL (without -t the integration fits it)."""
    if plan.preset != "sidekiq":
        return []
    from graceshell.config.procfile import command_words

    words = command_words(plan.argv)
    timeout = None
    for index, word in enumerate(words):
        value = None
        if word in ("-t", "--timeout") and index + 1 < len(words):
            value = words[index + 1]
        elif word.startswith("--timeout="):
            value = word.partition("=")[2]
        elif word.startswith("-t") and word[2:].isdigit():
            value = word[2:]
        if value is not None:
            try:
                timeout = float(value)
            except ValueError:
                return []
    budget = plan.kill_at
    room = budget - SIDEKIQ_ENSURE_GRACE
    if timeout is None or timeout <= room:
        return []
    cold = [step.at for step in plan.ladder[1:-1]]
    cut = (f"graceshell's cold step at {format_duration(cold[0])} cuts it short and Sidekiq pushes the jobs back "
           "then" if cold and cold[0] <= room else "the jobs still running may be lost to the kill")
    return [f"sidekiq's -t {format_duration(timeout)} does not fit a budget of {format_duration(budget)}: {cut}; "
            f"use -t {int(max(room, 0.0))} or less, or leave -t out and graceshell fits it to the budget"]


_RQ_INTEGRATION = "graceshell.integrations.rq"
# rq's own worker classes (rq/worker/worker_classes.py) and graceshell's
# counterpart of each; HerokuWorker and the rest get the mixin's advice.
_RQ_OWN_CLASSES = {"Worker": "Worker", "SimpleWorker": "SimpleWorker", "SpawnWorker": "SpawnWorker"}


def _rq_worker_class(plan: RunPlan, environ: Mapping[str, str]) -> list[str]:
    """`rq worker -w X` (or an RQ_WORKER_CLASS of the user's own) replaces the
    rq preset's RQ_WORKER_CLASS, and with it graceshell's shutdown in RQ."""
    if plan.preset != "rq":
        return []
    from graceshell.config.presets import PRESETS
    from graceshell.config.procfile import command_words

    preset_class = PRESETS["rq"].env["RQ_WORKER_CLASS"]
    words = command_words(plan.argv)
    named, origin = None, ""
    for index, word in enumerate(words):
        if word in ("-w", "--worker-class") and index + 1 < len(words):
            named, origin = words[index + 1], f"-w {words[index + 1]}"
        elif word.startswith("--worker-class="):
            named = word.partition("=")[2]
            origin = f"-w {named}"
        elif word.startswith("-w") and len(word) > 2 and not word.startswith("-w-"):
            named, origin = word[2:], f"-w {word[2:]}"
    if named is None:
        for value, where in ((environ.get("RQ_WORKER_CLASS"), "the environment"),
                             ((plan.env or {}).get("RQ_WORKER_CLASS"), "the configured env")):
            if value and value != preset_class:
                named, origin = value, f"RQ_WORKER_CLASS={value} from {where}"
                break
    if named is None or named.startswith(f"{_RQ_INTEGRATION}.") or named.startswith(f"{_RQ_INTEGRATION}:"):
        return []
    module, _, name = named.rpartition(".")
    replaces = (f"{origin} replaces the rq preset's RQ_WORKER_CLASS ({preset_class}), and with it graceshell's "
                "shutdown: the platform's TERM can kill the work horse, and the cold step fails or abandons the "
                "job in hand instead of requeueing it")
    if module.split(".")[0] == "rq" and name in _RQ_OWN_CLASSES:
        ours = f"{_RQ_INTEGRATION}.{_RQ_OWN_CLASSES[name]}"
        use = f"-w {ours}" if origin.startswith("-w") else f"RQ_WORKER_CLASS={ours}"
        return [f"{replaces}; use {use}, rq's {name} with graceshell's shutdown"]
    return [f"{replaces}, unless {name} already has {_RQ_INTEGRATION}.WorkerMixin among its bases; "
            f"define it as class {name}(WorkerMixin, ...) with WorkerMixin from {_RQ_INTEGRATION}"]


def _delayed_job_command(plan: RunPlan) -> list[str]:
    """delayed_job's script (lib/delayed/command.rb) hands its workers to the
    daemons gem: `start` daemonizes them and returns, and `run` runs them in
    the foreground one after another (-n N, --pool), not side by side."""
    if plan.preset != "delayed_job":
        return []
    from graceshell.config.procfile import command_words

    words = command_words(plan.argv)
    script = next((i for i, word in enumerate(words) if word.rsplit("/", 1)[-1] == "delayed_job"), None)
    if script is None:
        return []
    options = words[script + 1:]
    several = any(word in ("-n", "--number_of_workers") or word.startswith(("--number_of_workers=", "--pool"))
                  or (word.startswith("-n") and word[2:].isdigit()) for word in options)
    if "start" in options or "restart" in options:
        return ["delayed_job start daemonizes its workers and returns at once: graceshell takes that for the "
                "worker's end and stops them, as a container's end would; use `delayed_job run` or `rake jobs:work`, "
                "one worker per process, and run more processes for more workers"]
    if several:
        return ["delayed_job -n/--pool with run starts its workers one after another, not side by side (the "
                "next begins when one exits; graceshell's integration keeps one from starting after the stop): "
                "run one worker per process, and more processes for more workers"]
    return []


def _ruby_integration(plan: RunPlan, settings: Mapping[str, Setting], environ: Mapping[str, str]) -> list[str]:
    """A RUBYOPT of the user's own replaces the preset's, and with it the
    integration; Ruby splits RUBYOPT at spaces, so its path must have none."""
    from graceshell.config.presets import ruby_integration

    path = ruby_integration(plan.preset)
    if path is None:
        return []
    file = os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))  # ruby/sidekiq.rb
    if any(char.isspace() for char in path):
        return [f"graceshell is installed under a path with a space ({path}): Ruby splits RUBYOPT at spaces and "
                f"cannot load graceshell's {plan.preset} integration; install graceshell elsewhere"]
    for value, origin in ((environ.get("RUBYOPT"), "the environment"),
                          ((plan.env or {}).get("RUBYOPT"), _from(settings, "env"))):
        if value is not None and file not in value:
            return [f"RUBYOPT from {origin} replaces the {plan.preset} preset's, so graceshell's {plan.preset} "
                    f"integration is not loaded: add -r{path} to it"]
    return []


def render_text(entries: list[dict[str, Any]], notes: list[str]) -> str:
    lines = []
    for entry in entries:
        lines.append(f"{entry['process']} ({entry['source']}): {shlex.join(entry['command'])}")
        rows = [
            ("preset", entry["preset"]["value"], entry["preset"]["from"]),
            ("platform", entry["platform"]["value"], entry["platform"]["from"]),
            ("stop goes to", entry["broadcast"]["value"], entry["broadcast"]["from"]),
            ("platform timeout", _seconds(entry["platform_timeout_s"]["value"]), entry["platform_timeout_s"]["from"]),
            ("budget", _seconds(entry["budget_s"]["value"]), entry["budget_s"]["from"]),
            ("ladder", " ".join(f"{s['signal']}@{format_duration(s['at'])}" for s in entry["ladder"]["value"]),
             entry["ladder"]["from"]),
            ("warm phase", _seconds(entry["warm_phase_s"]["value"]), entry["warm_phase_s"]["from"]),
            *([("cold reserve", _seconds(entry["cold_reserve_s"]["value"]), entry["cold_reserve_s"]["from"])]
              if entry["cold_reserve_s"]["value"] is not None else []),
            ("remap", " ".join(f"{k}->{v}" for k, v in entry["remap"]["value"].items()) or "-",
             entry["remap"]["from"]),
            ("stop signals", ",".join(entry["stop_signals"]["value"]), entry["stop_signals"]["from"]),
            ("second signal", entry["second_signal"]["value"], entry["second_signal"]["from"]),
            ("linger", _seconds(entry["linger_s"]["value"]), entry["linger_s"]["from"]),
            ("on_orphans", entry["on_orphans"]["value"] or "-", entry["on_orphans"]["from"]),
            ("parent death", entry["parent_death_signal"]["value"], entry["parent_death_signal"]["from"]),
            ("env", " ".join(entry["env"]["value"]) or "-", entry["env"]["from"]),
            ("http", entry["http"]["value"] or "-", entry["http"]["from"]),
            ("interruption", entry["interruption_notices"]["value"] or "-", entry["interruption_notices"]["from"]),
            *([("metadata url", entry["metadata_url"]["value"], entry["metadata_url"]["from"])]
              if entry["metadata_url"]["value"] else []),
        ]
        width = max(len(str(value)) for _, value, _ in rows)
        for label, value, origin in rows:
            lines.append(f"  {label:<17}{str(value):<{width}}  ({origin})")
        lines.extend(f"  error: {text}" for text in entry["errors"])
        lines.extend(f"  warning: {text}" for text in entry["warnings"])
        lines.append("")
    lines.extend(f"note: {text}" for text in notes)
    return "\n".join(lines).rstrip() + "\n"


def _seconds(value: float | None) -> str:
    return "none" if value is None else format_duration(value)


def check(sources: Sources, process_type: str | None, flags: Mapping[str, Setting],
          environ: Mapping[str, str], command: list[str] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Effective settings of `-- COMMAND` (with the section of process_type,
    or of $GRACESHELL_PROCESS/$DYNO), of the chosen process, or of every
    Procfile process."""
    notes: list[str] = []
    # (name, where it is defined, argv, graceshell.yml section)
    targets: list[tuple[str, str, list[str], str | None]] = []
    if command:
        from graceshell.config.resolve import process_from_environment, process_type_of

        name = process_type or process_from_environment(environ)
        section = process_type_of(name) if name else None
        targets.append((name or os.path.basename(command[0]), "command line", list(command), section))
    elif process_type is not None:
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
                                [PLACEHOLDER], name))
        if not types:
            notes.append(f"no {sources.procfile_path}: showing what `graceshell run -- COMMAND` gets")
            targets.append(("(run -- COMMAND)", "command line", [PLACEHOLDER], None))
    if sources.config is None:
        notes.append("no graceshell.yml: built-in settings, presets and flags only")
    entries = [effective(name, source, argv, sources.settings_for(section, flags), environ)
               for name, source, argv, section in targets]
    return entries, notes

