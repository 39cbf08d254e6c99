"""The `graceshell` command line, built with click.

This module sits on top: it parses, resolves settings through the config
layer (graceshell.config: resolve, plan), and hands the plan to the engine
(graceshell.engine.supervisor) or to a command (graceshell.commands: start,
check, drill); nothing in the package imports it. Errors end as one line on stderr and a documented
exit status (2 for usage and config), never a traceback.

Start-up matters here: click is imported because it parses every command,
but nothing else heavy is. The logging library is imported by the
supervisor after the worker has been spawned.
"""

from __future__ import annotations

import os
import sys

import click

from graceshell.deferred import defer

from graceshell import __version__
from graceshell.durations import parse_duration
from graceshell.errors import NOT_EXECUTABLE_EXIT, NOT_FOUND_EXIT, USAGE_EXIT, GraceshellError, UsageError, one_line
from graceshell.logs import FORMATS, LEVELS, LOG_FORMAT_ENV, LOG_LEVEL_ENV
from graceshell.config.platforms import BROADCASTS, PLATFORMS
from graceshell.config.presets import PRESETS
from graceshell.config.settings import Origin, Setting, value_of
from graceshell.signals import parse_signal

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn

    from graceshell.config.plan import RunPlan
    from graceshell.config.resolve import Sources

PROG = "graceshell"
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
# `run` and `drill` take the worker's command as it is: everything from the
# first word that is not one of ours belongs to the worker.
COMMAND_CONTEXT = {**CONTEXT, "allow_interspersed_args": False}

RUN_HELP = """\
Supervise one worker through a platform stop.

\b
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

\b
exit status: the worker's; 128+N when it died of signal N; 2 usage or config
error; 126 not executable; 127 not found; 70 internal error."""

DRILL_HELP = """\
Stop a worker the way a platform would and say whether it survives.

\b
  graceshell drill --platform heroku worker
  graceshell drill --platform kubernetes --when-ready /tmp/ready -- rq worker
  graceshell drill --platform heroku --no-wrap -- celery -A app worker   (bare, for comparison)

The drill runs the worker under `graceshell run` (or bare with --no-wrap) in
a process tree of its own, waits --after DUR (default 5s) or until the
--when-ready file exists, sends the platform's stop signal by its model
(--broadcast all: every process, as Heroku does; group: the process group;
pid1: the top process, as Docker and Kubernetes do), and SIGKILLs what is
left at the platform's timeout.

\b
exit status: 0 when the worker stopped on its own within the budget (with
--no-wrap: within the platform timeout), with no orphaned job; 1 when it did
not; 2 usage or config error."""

START_HELP = """\
Run the Procfile's processes (all, or the PROCESS_TYPEs given), each under
its own `graceshell run` with its graceshell.yml section, with every output
line prefixed by the time and the process name.

Ctrl-C (or TERM) stops them all in parallel, each with its own ladder, in
the one budget; a second Ctrl-C escalates. When one exits on its own the
others are stopped, unless its `restart:` is on-failure or always (then it
is restarted with a backoff of 1s, 2s, 4s... up to `restart_limit` times a
minute). Each process gets PORT (base +100 per type, +1 per instance) and
GRACESHELL_PROCESS (worker.1). With --http (or `http:`), each process
serves its own endpoint, numbered the same way from the port given (from a
type's own `http:`, +1 per instance only).

\b
exit status: that of the process that ended the run, or 0 when a stop
signal ended it and every process stopped well; 2 usage or config error; 70
internal error (every process is killed first)."""

CHECK_HELP = """\
Validate graceshell.yml, the Procfile and .env, and print the effective
settings of each process (or of PROCESS_TYPE, or of the command after `--`):
platform and how it was detected, timeout, budget, ladder with absolute
offsets, remap, preset, and where each value comes from.

\b
  graceshell check
  graceshell check worker
  graceshell check --strict --preset rq -- rq worker high default

\b
exit status: 0 when all is well; 2 on any error (usage, config, or an
`error:` line); 1 on a warning with --strict."""

CHECK_WARNING_EXIT = 1

# Flags that are settings, with the key each one sets.
SETTING_FLAGS = ("preset", "platform", "broadcast", "platform_timeout", "budget", "ladder", "remap", "second_signal",
                 "linger", "stop_signals", "parent_death_signal", "on_orphans", "clean_exit", "log_format",
                 "log_level", "http", "interruption_notices", "metadata_url")


# -- value types: each one parses, and completes where there is a list to offer -----------------

class _ParsedValue(click.ParamType):
    """A value parsed by one of graceshell's own parsers, whose ValueError
    becomes click's usage error for the flag."""

    def __init__(self, name: str, parse: Callable[[str], Any]) -> None:
        self.name = name
        self.parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value  # already parsed (a default, or a value given twice through click)
        try:
            return self.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _remap(text: str) -> tuple[int, int]:
    source, sep, target = text.partition(":")
    if not sep:
        raise ValueError(f"{text!r} is not FROM:TO (e.g. TERM:QUIT)")
    return parse_signal(source), parse_signal(target)


def _signal_list(text: str) -> frozenset[int]:
    return frozenset(parse_signal(part) for part in text.split(",") if part.strip())


def _address(text: str) -> tuple[str, int]:
    from graceshell.fleet.options import parse_address

    return parse_address(text)


def _provider(text: str) -> str:
    from graceshell.fleet.options import parse_provider

    return parse_provider(text)


def _metadata_url(text: str) -> str:
    from graceshell.fleet.options import parse_metadata_url

    return parse_metadata_url(text)


def _ladder(text: str) -> list[Any]:
    from graceshell.config.ladder import parse_ladder_spec, resolve_offset

    specs = parse_ladder_spec(text)
    for spec in specs:  # offsets and signals now; the budget check comes with the plan
        resolve_offset(spec.at, 0.0)
        parse_signal(spec.signal)
    return specs


class _PresetName(click.ParamType):
    name = "preset"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value not in PRESETS:
            self.fail(f"unknown preset {value!r} (known: {', '.join(PRESETS)})", param, ctx)
        return value

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
        return [click.shell_completion.CompletionItem(name) for name in PRESETS if name.startswith(incomplete)]


class _PlatformName(click.ParamType):
    """Checked by the plan (so a platform from graceshell.yml gets the same
    message); offered here for completion."""

    name = "platform"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return value

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
        return [click.shell_completion.CompletionItem(name) for name in PLATFORMS if name.startswith(incomplete)]


def _complete_process_type(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Procfile process types, for PROCESS_TYPE and for `run`'s first word."""
    if param.name == "command" and ctx.params.get("command"):  # only a command's first word can be a type
        return []
    path = ctx.params.get("procfile") or "Procfile"
    try:
        from graceshell.config.procfile import read_procfile

        types = list(read_procfile(path).processes)
    except GraceshellError:
        return []
    return [click.shell_completion.CompletionItem(name) for name in types if name.startswith(incomplete)]


DURATION = _ParsedValue("duration", parse_duration)
SIGNALS = _ParsedValue("signals", _signal_list)
REMAP = _ParsedValue("from:to", _remap)
SIGNAL = _ParsedValue("signal", parse_signal)
LADDER = _ParsedValue("ladder", _ladder)
ADDRESS = _ParsedValue("host:port", _address)
URL = _ParsedValue("url", _metadata_url)
PROVIDER = _ParsedValue("provider", _provider)


def _setting_options(short_config: bool = True) -> Callable[[Any], Any]:
    """The options every command shares: where settings come from, and the settings."""
    config_names = ("-c", "--config") if short_config else ("--config",)
    options = [
        click.option(*config_names, "config", metavar="FILE", type=click.Path(dir_okay=False),
                     help="YAML config (default: $GRACESHELL_CONFIG, else ./graceshell.yml)"),
        click.option("-f", "--procfile", metavar="FILE", type=click.Path(dir_okay=False),
                     help="Procfile to read process types from (default: ./Procfile)"),
        click.option("-e", "--env", "env_files", metavar="FILE", multiple=True, type=click.Path(dir_okay=False),
                     help="env file for the worker, repeatable (default: ./.env when present); the real "
                          "environment wins"),
        click.option("--preset", metavar="NAME", type=_PresetName(),
                     help=f"worker preset: {', '.join(PRESETS)} (default: generic)"),
        click.option("--platform", metavar="NAME", type=_PlatformName(),
                     help=f"{', '.join(PLATFORMS)} (default: detected)"),
        click.option("--broadcast", type=click.Choice(BROADCASTS),
                     help="who gets the platform's stop signal, when the deployment changed its default: all "
                          "(every process, Heroku; systemd's KillMode=control-group), group (the process group), "
                          "pid1 (the top process: Docker, Kubernetes; systemd's KillMode=mixed)"),
        click.option("--platform-timeout", metavar="DUR", type=DURATION,
                     help="how long the platform waits after its stop signal before its SIGKILL"),
        click.option("--budget", metavar="DUR", type=DURATION,
                     help="time from the first stop signal to the SIGKILL of the whole tree (default: platform "
                          "timeout - 5s)"),
        click.option("--ladder", metavar="SPEC", type=LADDER,
                     help="escalation steps, e.g. 'TERM@0s,QUIT@budget-5s,KILL@25s'; KILL at the budget is "
                          "implied"),
        click.option("--remap", metavar="FROM:TO", type=REMAP, multiple=True,
                     help="send TO to the worker when graceshell receives FROM (repeatable)"),
        click.option("--second-signal", type=click.Choice(("escalate", "forward", "ignore")),
                     help="what a second stop signal does (default: escalate)"),
        click.option("--linger", metavar="DUR", type=DURATION,
                     help="after the worker exits, how long its leftovers may live before TERM, then KILL "
                          "(default: 2s)"),
        click.option("--stop-signals", metavar="LIST", type=SIGNALS,
                     help="signals that start a stop (default: TERM,INT,QUIT)"),
        click.option("--parent-death-signal", metavar="SIG", type=SIGNAL,
                     help="what the worker gets if graceshell itself dies (kill -9, the OOM killer); default: the "
                          "warm shutdown's signal"),
        click.option("--on-orphans", metavar="COMMAND",
                     help="run after a kill that orphaned jobs, with the report on stdin"),
        click.option("--clean-exit", is_flag=True, default=None,
                     help="exit 0 after a clean stop (the worker stopped at the first step, e.g. died of the TERM "
                          "it was sent: 143), as tini -e does; for systemd and others that count 143 a failure"),
        click.option("--http", metavar="HOST:PORT", type=ADDRESS, envvar="GRACESHELL_HTTP",
                     help="serve /livez /readyz /busy /metrics there (host default 127.0.0.1; off by default); "
                          "under start, each process gets PORT +100 per type, +1 per instance; $GRACESHELL_HTTP"),
        click.option("--interruption-notices", metavar="CLOUD", type=PROVIDER,
                     envvar="GRACESHELL_INTERRUPTION_NOTICES",
                     help="aws, gcp, azure or auto: start the stop at the cloud's spot/preemption notice, "
                          "before its SIGTERM (off by default); $GRACESHELL_INTERRUPTION_NOTICES"),
        click.option("--metadata-url", metavar="URL", type=URL,
                     help="base URL of the instance metadata service (default: the provider's own)"),
        click.option("--log-format", type=click.Choice(FORMATS), envvar=LOG_FORMAT_ENV,
                     help=f"auto (console on a TTY, JSON otherwise), json, logfmt, console; ${LOG_FORMAT_ENV}"),
        click.option("--log-level", type=click.Choice(tuple(LEVELS)), envvar=LOG_LEVEL_ENV,
                     help=f"debug, info, warning, error (default: info); ${LOG_LEVEL_ENV}"),
    ]

    def apply(function: Any) -> Any:
        for option in reversed(options):
            function = option(function)
        return function

    return apply


def flag_layer(ctx: click.Context) -> dict[str, Setting]:
    """The settings given on the command line (or by their environment variables)."""
    from click.core import ParameterSource

    envvars = {param.name: param.envvar for param in ctx.command.params}
    layer = {}
    for key in SETTING_FLAGS:
        value = ctx.params.get(key)
        if value is None or value == ():
            continue
        from_env = ctx.get_parameter_source(key) is ParameterSource.ENVIRONMENT
        label = f"${envvars[key]}" if from_env else "--" + key.replace("_", "-")
        layer[key] = Setting(dict(value) if key == "remap" else value, Origin(label))
    return layer


def _command_words(ctx: click.Context, words: tuple[str, ...]) -> tuple[list[str], bool]:
    """The worker's words, and whether they came after `--` (a command) rather
    than alone (a Procfile process type). click drops the `--` itself, so it
    is looked for in the raw arguments, just before the words."""
    raw = ctx.meta.get("graceshell.raw_args", [])
    tail = len(raw) - len(words)
    return list(words), tail >= 1 and raw[tail - 1] == "--"


class _CommandLine(click.Command):
    """A command that keeps its raw arguments, to tell `-- worker` from `worker`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["graceshell.raw_args"] = list(args)
        return super().parse_args(ctx, args)


# -- the commands -----------------------------------------------------------------------------

@click.group(context_settings=CONTEXT, help="graceshell: graceful shutdown for background-job workers.")
@click.version_option(__version__, "--version", prog_name=PROG, message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context) -> None:
    if ctx.invoked_subcommand not in ("run", "start"):  # they take the recorded stop signals over
        _release_recorded()


def _sources(config: str | None, procfile: str | None, env_files: tuple[str, ...]) -> Sources:
    from graceshell.config.resolve import Sources

    return Sources(config, procfile, list(env_files) or None, os.environ, read_run_line=read_run_line)


def read_run_line(argv: list[str], where: str) -> tuple[list[str], dict[str, Setting]]:
    """A Procfile line that itself runs `graceshell run [OPTIONS] -- CMD`: the
    worker's own command and the line's flags as settings, parsed by the very
    command that parses them on a command line."""
    options = argv[2:argv.index("--")] if "--" in argv else argv[2:]
    if "-h" in options or "--help" in options:  # would print run's help instead of checking the line
        raise UsageError(f"{where}: --help inside a Procfile line; write the worker's command after "
                         "`graceshell run --`")
    try:
        ctx = run.make_context("run", list(argv[2:]), resilient_parsing=False)
    except click.UsageError as exc:
        raise UsageError(f"{where}: {exc.format_message()}") from None
    params = ctx.params
    for flag, key in (("--config", "config"), ("--procfile", "procfile"), ("--env", "env_files")):
        if params.get(key):
            raise UsageError(f"{where}: {flag} inside a Procfile line is not supported; give it to the outer "
                             "graceshell command")
    words, explicit = _command_words(ctx, params["command"])
    if not explicit and len(words) == 1:
        raise UsageError(f"{where}: `graceshell run {words[0]}` inside the Procfile nests a process type; "
                         "write the worker's own command after `graceshell run --`")
    if not words:
        raise UsageError(f"{where}: `graceshell run` without a command")
    # Only what the line wrote counts: environment variables are the outer command's.
    from click.core import ParameterSource

    inline = {key: Setting(setting.value, Origin(f"{where} {setting.origin}"))
              for key, setting in flag_layer(ctx).items()
              if ctx.get_parameter_source(key) is not ParameterSource.ENVIRONMENT}
    return words, inline


def _plan_for(ctx: click.Context, words: tuple[str, ...], name: str | None) -> tuple[RunPlan, dict[str, Setting]]:
    """The run plan of `-- COMMAND...` or of a Procfile PROCESS_TYPE."""
    from graceshell.config.plan import make_plan
    from graceshell.config.resolve import process_from_environment, process_type_of

    params = ctx.params
    argv, explicit = _command_words(ctx, words)
    sources = _sources(params["config"], params["procfile"], params["env_files"])
    if not explicit and len(argv) == 1:
        name = section = argv[0]
        argv = sources.process_command(section)
    else:
        name = name or process_from_environment(os.environ)
        section = process_type_of(name) if name else None
    settings = sources.settings_for(section, flag_layer(ctx))
    if name:
        settings["name"] = Setting(name, Origin("--name"))
    return make_plan(argv, settings, os.environ), settings


@cli.command(cls=_CommandLine, context_settings=COMMAND_CONTEXT, help=RUN_HELP,
             short_help="supervise one worker through a platform stop",
             options_metavar="[OPTIONS] (-- COMMAND [ARG]... | PROCESS_TYPE)")
@_setting_options()
@click.option("--name", metavar="NAME",
              help="process name in logs, and the graceshell.yml section to use (default: $GRACESHELL_PROCESS, "
                   "else $DYNO, else the command's name)")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="", shell_complete=_complete_process_type)
@click.pass_context
def run(ctx: click.Context, command: tuple[str, ...], name: str | None, **_: Any) -> int:
    plan, settings = _plan_for(ctx, command, name)
    log_format = value_of(settings, "log_format", "auto")
    log_level = value_of(settings, "log_level", "info")
    from graceshell.engine.supervisor import run as supervise

    try:
        return supervise(plan, log_format, log_level)
    except FileNotFoundError:
        return _not_started(plan, NOT_FOUND_EXIT, f"{plan.argv[0]}: command not found", log_format, log_level)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        return _not_started(plan, NOT_EXECUTABLE_EXIT, f"{plan.argv[0]}: cannot execute: {reason}", log_format,
                            log_level)
    finally:
        _ignore_late_signals()


def _ignore_late_signals() -> None:
    """The report is written and its exit status chosen: a signal that comes
    now (`start` stopping every process as this one ends) must not change it.
    Python resets the handlers it installed to the default at exit, and a
    default TERM would make this run's status 143 after a report of 6. Every
    signal graceshell was catching is ignored, not the stop signals alone (a
    late HUP or USR1 would end the process just the same)."""
    import signal

    for signum in signal.valid_signals():
        if callable(signal.getsignal(signum)):
            signal.signal(signum, signal.SIG_IGN)


def _not_started(plan: RunPlan, code: int, error: str, log_format: str, log_level: str) -> int:
    """A command that could not be executed ends with its report too, in the log's format."""
    from graceshell.engine.report import not_started_report
    from graceshell.logs import make_logger

    make_logger(log_format, log_level, process=plan.name).error("graceshell.exit",
                                                                **not_started_report(plan, code, error))
    return code


@cli.command(cls=_CommandLine, context_settings=COMMAND_CONTEXT, help=DRILL_HELP,
             short_help="stop a worker as a platform would; say whether it survives",
             options_metavar="[OPTIONS] (-- COMMAND [ARG]... | PROCESS_TYPE)")
@_setting_options()
@click.option("--name", metavar="NAME", help="process name, and the graceshell.yml section to use")
@click.option("--after", metavar="DUR", type=DURATION, help="when to stop the worker (default: 5s after it started)")
@click.option("--when-ready", metavar="FILE", help="stop the worker once FILE exists")
@click.option("--no-wrap", is_flag=True, help="run the worker bare, without graceshell")
@click.option("--json", "as_json", is_flag=True, help="print the verdict as JSON")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="", shell_complete=_complete_process_type)
@click.pass_context
def drill(ctx: click.Context, command: tuple[str, ...], name: str | None, after: float | None,
          when_ready: str | None, no_wrap: bool, as_json: bool, **_: Any) -> int:
    import json

    from graceshell.commands.drill import Drill, render

    if after is not None and when_ready:
        raise UsageError("--after and --when-ready: give one of them")
    plan, _settings = _plan_for(ctx, command, name)
    exercise = Drill(plan, broadcast=plan.platform.broadcast, wrap=not no_wrap, after=after, when_ready=when_ready,
                     config=ctx.params["config"], out=sys.stderr)
    result = exercise.run()
    sys.stdout.write(json.dumps(result, indent=2) + "\n" if as_json else render(result))
    return 0 if result["survived"] else 1


@cli.command(context_settings=CONTEXT, help=START_HELP, short_help="run every Procfile process, each under graceshell",
             options_metavar="[OPTIONS] [PROCESS_TYPE]...")
@_setting_options(short_config=False)
@click.option("-c", "--concurrency", metavar="TYPE=N,...",
              help="instances per type, e.g. worker=2,web=1 (-c is honcho's and foreman's concurrency here; in run, "
                   "check and drill it is --config, which start spells out)")
@click.option("-p", "--port", metavar="PORT", type=click.IntRange(1, 65535),
              help="base port: +100 per process type, +1 per instance (default: $PORT, else 5000)")
@click.argument("process_types", nargs=-1, metavar="", shell_complete=_complete_process_type)
@click.pass_context
def start(ctx: click.Context, process_types: tuple[str, ...], concurrency: str | None, port: int | None,
          **_: Any) -> int:
    from graceshell.logs import make_logger, resolve_format, use_colour
    from graceshell.config.plan import make_plan, run_command_line
    from graceshell.commands.start import (DEFAULT_RESTART_LIMIT, PORT_STEP_PER_TYPE, Instance, Starter, base_port,
                                           colour_for, parse_concurrency)

    environ = os.environ
    params = ctx.params
    sources = _sources(params["config"], params["procfile"], params["env_files"])
    types = list(sources.procfile.processes)
    for process_type in process_types:
        if process_type not in types:
            raise UsageError(f"{sources.procfile.path}: no process type {process_type!r} "
                             f"(types: {', '.join(types)})")
    chosen = list(process_types) or types
    counts = parse_concurrency(concurrency, chosen)
    flags = flag_layer(ctx)
    requested = value_of(flags, "log_format", "auto")
    child_format = resolve_format(requested, sys.stderr)  # every process's events come out on start's stderr
    first_port = port if port is not None else base_port(environ)
    instances = []
    for type_index, process_type in enumerate(chosen):
        argv = sources.process_command(process_type)
        settings = sources.settings_for(process_type, flags)
        base_http = settings.get("http")
        # A port written for this type alone is its own: only its instances are numbered from it.
        own_port = "http" not in flags and ("http" in sources.inline.get(process_type, {}) or (
            sources.config is not None and "http" in sources.config.processes.get(process_type, {})))
        type_offset = 0 if own_port else PORT_STEP_PER_TYPE * type_index
        for number in range(1, counts[process_type] + 1):
            instance_name = f"{process_type}.{number}"
            settings["name"] = Setting(instance_name, Origin("start"))
            if base_http is not None:  # one endpoint per process, numbered as PORT is
                settings["http"] = _instance_address(base_http, type_offset + number - 1)
            plan = make_plan(argv, settings, environ)  # every plan is checked before anything starts
            env = {**environ, "PORT": str(first_port + PORT_STEP_PER_TYPE * type_index + number - 1),
                   "GRACESHELL_PROCESS": instance_name}
            restart = value_of(settings, "restart", "no")
            limit = value_of(settings, "restart_limit", DEFAULT_RESTART_LIMIT)
            child = run_command_line(plan, params["config"], log_format=child_format,
                                     env_files=list(params["env_files"]) or None)
            instances.append(Instance(instance_name, child, env, restart, limit, colour_for(len(instances))))
    if not instances:
        raise UsageError("nothing to start: every process type has a concurrency of 0")
    log = make_logger(requested, value_of(flags, "log_level", "info"))
    return Starter(instances, log, sys.stdout.buffer, colour=use_colour(sys.stdout), events=sys.stderr.buffer,
                   event_format=child_format).run()


def _instance_address(base: Setting, offset: int) -> Setting:
    """The endpoint of one process under `start`: the base port +100 per type, +1 per instance."""
    from graceshell.fleet.options import offset_address

    try:
        return Setting(offset_address(base.value, offset), base.origin)
    except ValueError as exc:
        raise UsageError(f"{base.origin}: {exc}") from None


@cli.command(cls=_CommandLine, context_settings=CONTEXT, help=CHECK_HELP,
             short_help="validate config and Procfile, print effective settings",
             options_metavar="[OPTIONS] [PROCESS_TYPE] [-- COMMAND [ARG]...]")
@_setting_options()
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@click.option("--strict", is_flag=True, help="exit 1 on a warning too (for CI)")
@click.argument("words", nargs=-1, type=click.UNPROCESSED, metavar="", shell_complete=_complete_process_type)
@click.pass_context
def check(ctx: click.Context, words: tuple[str, ...], as_json: bool, strict: bool, **_: Any) -> int:
    import json

    from graceshell.commands.check import check as check_sources, render_text

    process_type, command = _type_and_command(ctx, words)
    params = ctx.params
    sources = _sources(params["config"], params["procfile"], params["env_files"])
    entries, notes = check_sources(sources, process_type, flag_layer(ctx), os.environ, command)
    if as_json:
        sys.stdout.write(json.dumps({"processes": entries, "notes": notes}, indent=2) + "\n")
    else:
        sys.stdout.write(render_text(entries, notes))
    errors = sum(len(entry["errors"]) for entry in entries)
    warnings = sum(len(entry["warnings"]) for entry in entries)
    if errors:
        sys.stdout.flush()
        sys.stderr.write(f"graceshell: check: {errors} error{'s' * (errors != 1)}\n")
        return USAGE_EXIT
    if strict and warnings:
        sys.stdout.flush()
        sys.stderr.write(f"graceshell: check: {warnings} warning{'s' * (warnings != 1)} (--strict)\n")
        return CHECK_WARNING_EXIT
    return 0


def _type_and_command(ctx: click.Context, words: tuple[str, ...]) -> tuple[str | None, list[str] | None]:
    """`check [PROCESS_TYPE] [-- COMMAND...]`: what came after `--` is a
    command (click drops the `--`, so it is found in the raw arguments)."""
    raw = ctx.meta.get("graceshell.raw_args", [])
    after = len(raw) - raw.index("--") - 1 if "--" in raw else 0
    before, command = list(words[:len(words) - after]), list(words[len(words) - after:])
    if len(before) > 1:
        raise click.UsageError(f"check takes one PROCESS_TYPE, got {' '.join(before)} (a command goes after `--`)",
                               ctx=ctx)
    if "--" in raw and not command:
        raise click.UsageError("no command after `--`", ctx=ctx)
    return (before[0] if before else None), (command or None)


# -- the entry point --------------------------------------------------------------------------

def _fail(message: str, code: int) -> NoReturn:
    try:
        sys.stderr.write(f"graceshell: error: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    sys.exit(code)


def _usage_line(exc: click.UsageError) -> str:
    """click's usage error as graceshell's one line, with where to find help."""
    message = " ".join(exc.format_message().split())
    command = exc.ctx.command_path if exc.ctx is not None else PROG
    return f"{message} (see '{command} --help')"


def _release_recorded() -> None:
    """Stop signals the entry point recorded (graceshell.early) act now, as they would have."""
    early = sys.modules.get("graceshell.early")
    if early is not None:
        early.release()


def _dispatch(args: list[str]) -> Any:
    try:
        return cli.main(args, prog_name=PROG, standalone_mode=False)
    finally:  # --help, --version, a usage error: a stop recorded meanwhile acts now
        _release_recorded()


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point of the console script and of `python -m graceshell`."""
    # Before structlog loads (after the spawn): it imports asyncio for async
    # logging methods graceshell never calls (deferred.py). click's `inspect`
    # cannot wait: its options clean their help text with it as they are built.
    defer("asyncio")
    args = sys.argv[1:] if argv is None else argv
    try:
        code = _dispatch(args)
    except GraceshellError as exc:
        _fail(str(exc), exc.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:  # `graceshell` alone: the help, as a usage error
        sys.stderr.write(exc.ctx.get_help() + "\n" if exc.ctx is not None else exc.format_message() + "\n")
        sys.exit(USAGE_EXIT)
    except click.UsageError as exc:
        _fail(one_line(_usage_line(exc)), USAGE_EXIT)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except (click.Abort, KeyboardInterrupt):  # Ctrl-C before graceshell took over its signals
        _fail("interrupted", 130)
    except BrokenPipeError:  # `graceshell check | head -1`: the reader has all it wanted
        sys.stderr.close()
        os._exit(0)
    sys.exit(code if isinstance(code, int) else 0)
