"""The `graceshell` command line.

Parsing only: settings are resolved in resolve.py and plan.py and carried
out by the supervisor. Errors end as one line on stderr and a documented
exit status (2 for usage and config), never a traceback.

argparse, not click: the parser is on the path of every worker start, and
importing click costs about three times Python's own start-up here, more
than the whole of `graceshell run -- true` may take.
"""

from __future__ import annotations

import argparse
import os
import sys

from graceshell import __version__
from graceshell.durations import parse_duration
from graceshell.errors import NOT_EXECUTABLE_EXIT, NOT_FOUND_EXIT, GraceshellError, UsageError
from graceshell.logs import FORMATS, LEVELS
from graceshell.settings import Origin, Setting
from graceshell.signals import parse_signal

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import NoReturn

    from graceshell.plan import RunPlan

RUN_DESCRIPTION = """\
Supervise one worker through a platform stop.

  graceshell run -- celery -A app worker
  graceshell run --preset rq -- rq worker high default
  graceshell run worker            (the command of `worker` in ./Procfile)

The worker runs in its own session, so signals aimed at graceshell's group
never reach its children. On the first stop signal (TERM, INT, QUIT) the
worker alone gets the ladder's first signal; later steps fire at their
offsets; at the budget the whole tree is SIGKILLed, before the platform's
own deadline. Other signals are passed to the worker as they are.

Settings come from flags, then graceshell.yml (the process's section, then
`defaults:`, then the top level), then the preset, then the platform.

exit status: the worker's; 128+N when it died of signal N; 2 usage or config
error; 126 not executable; 127 not found; 70 internal error."""

DRILL_DESCRIPTION = """\
Stop a worker the way a platform would and say whether it survives.

  graceshell drill --platform heroku worker
  graceshell drill --platform kubernetes --when-ready /tmp/ready -- rq worker
  graceshell drill --platform heroku --no-wrap -- celery -A app worker   (bare, for comparison)

The drill runs the worker under `graceshell run` (or bare with --no-wrap) in
a process tree of its own, waits --after DUR (default 5s) or until the
--when-ready file exists, sends the platform's stop signal by its model
(--broadcast all: every process, as Heroku does; group: the process group;
pid1: the top process, as Docker and Kubernetes do), and SIGKILLs what is
left at the platform's timeout.

exit status: 0 when the worker stopped within the platform timeout with no
orphaned job; 1 when it did not; 2 usage or config error."""

START_DESCRIPTION = """\
Run the Procfile's processes (all, or the PROCESS_TYPEs given), each under
its own `graceshell run` with its graceshell.yml section, with every output
line prefixed by the time and the process name.

Ctrl-C (or TERM) stops them all in parallel, each with its own ladder, in
the one budget; a second Ctrl-C escalates. When one exits on its own the
others are stopped, unless its `restart:` is on-failure or always (then it
is restarted with a backoff of 1s, 2s, 4s... up to `restart_limit` times a
minute). Each process gets PORT (base +100 per type, +1 per instance) and
GRACESHELL_PROCESS (worker.1).

exit status: that of the process that ended the run, or 0 when a stop
signal ended it and every process stopped well; 2 usage or config error; 70
internal error (every process is killed first)."""

CHECK_DESCRIPTION = """\
Validate graceshell.yml, the Procfile and .env, and print the effective
settings of each process (or of PROCESS_TYPE): platform and how it was
detected, timeout, budget, ladder with absolute offsets, remap, preset, and
where each value comes from. Exit 2 on any error."""

# Flags that are settings, with the key they set.
SETTING_FLAGS = ("preset", "platform", "platform_timeout", "budget", "ladder", "remap", "second_signal",
                 "linger", "stop_signals", "on_orphans", "log_format", "log_level")


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line instead of usage + exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _converter(parse):  # type: ignore[no-untyped-def]
    def convert(text: str):  # type: ignore[no-untyped-def]
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def _remap(text: str) -> tuple[int, int]:
    source, sep, target = text.partition(":")
    if not sep:
        raise ValueError(f"{text!r} is not FROM:TO (e.g. TERM:QUIT)")
    return parse_signal(source), parse_signal(target)


def _signal_list(text: str) -> frozenset[int]:
    return frozenset(parse_signal(part) for part in text.split(",") if part.strip())


def _ladder(text: str) -> list:  # type: ignore[type-arg]
    from graceshell.ladder import parse_ladder_spec, resolve_offset

    specs = parse_ladder_spec(text)
    for spec in specs:  # offsets and signals now; the budget check comes with the plan
        resolve_offset(spec.at, 0.0)
        parse_signal(spec.signal)
    return specs


def _preset(name: str) -> str:
    from graceshell.presets import PRESETS

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return name


def _add_setting_options(parser: argparse.ArgumentParser, short_config: bool = True) -> None:
    add = parser.add_argument
    add(*(("-c", "--config") if short_config else ("--config",)), metavar="FILE",
        help="YAML config (default: $GRACESHELL_CONFIG, else ./graceshell.yml)")
    add("--procfile", metavar="FILE", help="Procfile to read process types from (default: ./Procfile)")
    add("--env", metavar="FILE", action="append",
        help="env file for the worker, repeatable (default: ./.env when present); the real environment wins")
    add("--preset", metavar="NAME", type=_converter(_preset),
        help="worker preset: generic, celery, rq, sidekiq, resque, delayed_job, gunicorn, uvicorn")
    add("--platform", metavar="NAME",
        help="heroku, render, fly, railway, cloudrun, ecs, kubernetes, systemd, docker, none (default: detected)")
    add("--platform-timeout", metavar="DUR", type=_converter(parse_duration),
        help="how long the platform waits after its stop signal before its SIGKILL")
    add("--budget", metavar="DUR", type=_converter(parse_duration),
        help="time from the first stop signal to the SIGKILL of the whole tree (default: platform timeout - 5s)")
    add("--ladder", metavar="SPEC", type=_converter(_ladder),
        help="escalation steps, e.g. 'TERM@0s,QUIT@budget-5s,KILL@25s'; KILL at the budget is implied")
    add("--remap", metavar="FROM:TO", type=_converter(_remap), action="append",
        help="send TO to the worker when graceshell receives FROM (repeatable)")
    add("--second-signal", choices=("escalate", "forward", "ignore"),
        help="what a second stop signal does (default: escalate)")
    add("--linger", metavar="DUR", type=_converter(parse_duration),
        help="after the worker exits, how long its leftovers may live before TERM, then KILL (default: 2s)")
    add("--stop-signals", metavar="LIST", type=_converter(_signal_list),
        help="signals that start a stop (default: TERM,INT,QUIT)")
    add("--on-orphans", metavar="COMMAND", help="run after a kill that orphaned jobs, with the report on stdin")
    add("--log-format", metavar="FORMAT",
        help="auto (console on a TTY, JSON otherwise), json, logfmt, console; $GRACESHELL_LOG_FORMAT")
    add("--log-level", metavar="LEVEL", help="debug, info, warning, error (default: info); $GRACESHELL_LOG_LEVEL")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Help at $COLUMNS or 100 columns: argparse would otherwise import shutil
    and ask the terminal on every argument it adds, on the path of every start."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if width is None:
            columns = os.environ.get("COLUMNS", "")
            width = max(int(columns) - 2, 40) if columns.isdigit() else 100
        super().__init__(prog, indent_increment, max_help_position, width)


def _configure_run(run: argparse.ArgumentParser) -> None:
    _add_setting_options(run)
    run.add_argument("--name", metavar="NAME",
                     help="process name in logs, and the graceshell.yml section to use (default: $DYNO or "
                          "the command's name)")
    run.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def _configure_drill(drill: argparse.ArgumentParser) -> None:
    _add_setting_options(drill)
    drill.add_argument("--name", metavar="NAME", help="process name, and the graceshell.yml section to use")
    drill.add_argument("--broadcast", choices=("all", "group", "pid1"),
                       help="who gets the stop signal (default: the platform's model)")
    drill.add_argument("--after", metavar="DUR", type=_converter(parse_duration),
                       help="when to stop the worker (default: 5s after it started)")
    drill.add_argument("--when-ready", metavar="FILE", help="stop the worker once FILE exists")
    drill.add_argument("--no-wrap", action="store_true", help="run the worker bare, without graceshell")
    drill.add_argument("--json", action="store_true", help="print the verdict as JSON")
    drill.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def _configure_start(start: argparse.ArgumentParser) -> None:
    _add_setting_options(start, short_config=False)
    start.add_argument("-c", "--concurrency", metavar="TYPE=N,...", help="instances per type, e.g. worker=2,web=1")
    start.add_argument("-p", "--port", metavar="PORT", type=int,
                       help="base port: +100 per process type, +1 per instance (default: $PORT, else 5000)")
    start.add_argument("process_types", nargs="*", metavar="PROCESS_TYPE", help=argparse.SUPPRESS)


def _configure_check(check: argparse.ArgumentParser) -> None:
    _add_setting_options(check)
    check.add_argument("--json", action="store_true", help="print JSON instead of a table")
    check.add_argument("process_type", nargs="?", metavar="PROCESS_TYPE", help=argparse.SUPPRESS)


# name: (one-line help, usage, description, how its options are added)
COMMANDS = {
    "run": ("supervise one worker through a platform stop",
            "graceshell run [OPTIONS] (-- COMMAND [ARG]... | PROCESS_TYPE)", RUN_DESCRIPTION, _configure_run),
    "start": ("run every Procfile process, each under graceshell",
              "graceshell start [OPTIONS] [PROCESS_TYPE]...", START_DESCRIPTION, _configure_start),
    "check": ("validate config and Procfile, print effective settings",
              "graceshell check [OPTIONS] [PROCESS_TYPE]", CHECK_DESCRIPTION, _configure_check),
    "drill": ("stop a worker as a platform would; say whether it survives",
              "graceshell drill [OPTIONS] (-- COMMAND [ARG]... | PROCESS_TYPE)", DRILL_DESCRIPTION, _configure_drill),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, the options of that one command alone are built
    (the others stay as names), which is all that parsing its arguments needs."""
    parser = _Parser(prog="graceshell", description="graceshell: graceful shutdown for background-job workers.",
                     formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"graceshell {__version__}")
    commands = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)
    for name, (summary, usage, description, configure) in COMMANDS.items():
        sub = commands.add_parser(name, help=summary, usage=usage, description=description,
                                  formatter_class=_Formatter)
        if only is None or only == name:
            configure(sub)
    return parser


def flag_layer(options: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, Setting]:
    """The settings given on the command line (and their environment variables)."""
    layer = {}
    for key in SETTING_FLAGS:
        value = getattr(options, key, None)
        flag = "--" + key.replace("_", "-")
        if value is None and key in ("log_format", "log_level"):
            variable = f"GRACESHELL_{key.upper()}"
            value, flag = environ.get(variable) or None, f"${variable}"
        if value is None:
            continue
        if key == "remap":
            value = dict(value)
        layer[key] = Setting(value, Origin(flag))
    for key, choices in (("log_format", FORMATS), ("log_level", tuple(LEVELS))):
        if key in layer and layer[key].value not in choices:
            raise UsageError(f"{layer[key].origin}: {layer[key].value!r} is not one of {', '.join(choices)}")
    return layer


def _plan_for(options: argparse.Namespace) -> tuple[RunPlan, dict[str, Setting]]:
    """The run plan of `-- COMMAND...` or of a Procfile PROCESS_TYPE."""
    from graceshell.plan import make_plan
    from graceshell.resolve import Sources, process_from_environment, process_type_of

    environ = os.environ
    words = list(options.command)
    explicit = words[:1] == ["--"]
    if explicit:
        words = words[1:]
    sources = Sources(options.config, options.procfile, options.env, environ)
    if not explicit and len(words) == 1:
        name = section = words[0]
        argv = sources.process_command(section)
    else:
        argv = words
        name = options.name or process_from_environment(environ)
        section = process_type_of(name) if name else None
    settings = sources.settings_for(section, flag_layer(options, environ))
    if name:
        settings["name"] = Setting(name, Origin("--name"))
    return make_plan(argv, settings, environ), settings


def drill_command(options: argparse.Namespace) -> int:
    import json

    from graceshell.drill import Drill, render

    if options.after is not None and options.when_ready:
        raise UsageError("--after and --when-ready: give one of them")
    plan, _ = _plan_for(options)
    drill = Drill(plan, broadcast=options.broadcast, wrap=not options.no_wrap, after=options.after,
                  when_ready=options.when_ready, config=options.config, out=sys.stderr)
    result = drill.run()
    sys.stdout.write(json.dumps(result, indent=2) + "\n" if options.json else render(result))
    return 0 if result["survived"] else 1


def start_command(options: argparse.Namespace) -> int:
    from graceshell.logs import Logger
    from graceshell.plan import make_plan, run_command_line
    from graceshell.resolve import Sources
    from graceshell.start import (BASE_PORT, DEFAULT_RESTART_LIMIT, PORT_STEP_PER_TYPE, Instance, Starter,
                                  colour_for, parse_concurrency)

    environ = os.environ
    sources = Sources(options.config, options.procfile, options.env, environ)
    types = list(sources.procfile.processes)
    for name in options.process_types:
        if name not in types:
            raise UsageError(f"{sources.procfile.path}: no process type {name!r} (types: {', '.join(types)})")
    chosen = options.process_types or types
    counts = parse_concurrency(options.concurrency, chosen)
    flags = flag_layer(options, environ)
    tty = sys.stdout.isatty()
    requested = flags["log_format"].value if "log_format" in flags else "auto"
    child_format = ("console" if tty else "json") if requested == "auto" else requested
    base_port = options.port or int(environ.get("PORT", "") or BASE_PORT)
    instances = []
    for type_index, name in enumerate(chosen):
        argv = sources.process_command(name)
        settings = sources.settings_for(name, flags)
        for number in range(1, counts[name] + 1):
            instance_name = f"{name}.{number}"
            settings["name"] = Setting(instance_name, Origin("start"))
            plan = make_plan(argv, settings, environ)  # every plan is checked before anything starts
            env = {**environ, "PORT": str(base_port + PORT_STEP_PER_TYPE * type_index + number - 1),
                   "GRACESHELL_PROCESS": instance_name}
            restart = settings["restart"].value if "restart" in settings else "no"
            limit = settings["restart_limit"].value if "restart_limit" in settings else DEFAULT_RESTART_LIMIT
            child = run_command_line(plan, options.config, log_format=child_format, env_files=options.env)
            instances.append(Instance(instance_name, child, env, restart, limit, colour_for(len(instances))))
    if not instances:
        raise UsageError("nothing to start: every process type has a concurrency of 0")
    log = Logger(requested, flags["log_level"].value if "log_level" in flags else "info")
    return Starter(instances, log, sys.stdout.buffer, colour=tty and "NO_COLOR" not in environ).run()


def run_command(options: argparse.Namespace) -> int:
    from graceshell.logs import Logger

    plan, settings = _plan_for(options)
    log_format = settings["log_format"].value if "log_format" in settings else "auto"
    log_level = settings["log_level"].value if "log_level" in settings else "info"
    from graceshell.supervisor import run

    try:
        return run(plan, Logger(log_format, log_level))
    except FileNotFoundError:
        raise GraceshellError(f"{plan.argv[0]}: command not found", NOT_FOUND_EXIT) from None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise GraceshellError(f"{plan.argv[0]}: cannot execute: {reason}", NOT_EXECUTABLE_EXIT) from None


def check_command(options: argparse.Namespace) -> int:
    import json

    from graceshell.check import check, render_text
    from graceshell.resolve import Sources

    environ = os.environ
    sources = Sources(options.config, options.procfile, options.env, environ)
    entries, notes = check(sources, options.process_type, flag_layer(options, environ), environ)
    if options.json:
        sys.stdout.write(json.dumps({"processes": entries, "notes": notes}, indent=2) + "\n")
    else:
        sys.stdout.write(render_text(entries, notes))
    return 0


def _fail(message: str, code: int) -> NoReturn:
    try:
        sys.stderr.write(f"graceshell: error: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    sys.exit(code)


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point of the console script and of `python -m graceshell`."""
    try:
        args = sys.argv[1:] if argv is None else argv
        options = build_parser(args[0] if args and args[0] in COMMANDS else None).parse_args(args)
        handler = {"run": run_command, "check": check_command, "drill": drill_command,
                   "start": start_command}[options.subcommand]
        code = handler(options)
    except GraceshellError as exc:
        _fail(str(exc), exc.exit_code)
    sys.exit(code)
