"""The `graceshell` command line.

Parsing only: every decision is made in plan.py and carried out by the
supervisor. Errors end as one line on stderr and a documented exit status
(2 for usage), never a traceback.
"""

import sys
from typing import Any, NoReturn

import click

from graceshell import __version__
from graceshell.durations import parse_duration
from graceshell.errors import NOT_EXECUTABLE_EXIT, NOT_FOUND_EXIT, USAGE_EXIT, GraceshellError, UsageError
from graceshell.logs import FORMATS, LEVELS
from graceshell.signals import parse_signal

RUN_HELP = """Supervise one worker through a platform stop.

\b
  graceshell run -- celery -A app worker
  graceshell run --budget 25s --ladder 'QUIT@20s' -- rq worker

The worker runs in its own session, so signals aimed at graceshell's group
never reach its children. On the first stop signal (TERM, INT, QUIT) the
worker alone gets the ladder's first signal; later steps fire at their
offsets; at the budget the whole tree is SIGKILLed, before the platform's
own deadline. Other signals are passed to the worker as they are.
"""


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _remaps(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[int, int]:
    remap = {}
    for value in values:
        source, sep, target = value.partition(":")
        if not sep:
            raise click.BadParameter(f"{value!r} is not FROM:TO (e.g. TERM:QUIT)", ctx, param)
        try:
            remap[parse_signal(source)] = parse_signal(target)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None
    return remap


def _signal_list(ctx: click.Context, param: click.Parameter, value: str | None) -> frozenset[int] | None:
    if value is None:
        return None
    try:
        return frozenset(parse_signal(part) for part in value.split(",") if part.strip())
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="graceshell", message="%(prog)s %(version)s")
def cli() -> None:
    """graceshell: graceful shutdown for background-job workers."""


@cli.command(
    "run",
    help=RUN_HELP,
    context_settings={"allow_interspersed_args": False},
    options_metavar="[OPTIONS] --",
)
@click.option("--budget", metavar="DUR", callback=_duration,
              help="Time from the first stop signal to the SIGKILL of the whole tree "
                   "[default: platform timeout - 5s].")
@click.option("--ladder", metavar="SPEC",
              help="Escalation steps, e.g. 'TERM@0s,QUIT@budget-5s,KILL@25s'. KILL at the budget is implied.")
@click.option("--remap", "remap", metavar="FROM:TO", multiple=True, callback=_remaps,
              help="Send TO to the worker when graceshell receives FROM (repeatable).")
@click.option("--second-signal", type=click.Choice(["escalate", "forward", "ignore"]), default="escalate",
              show_default=True, help="What a second stop signal does.")
@click.option("--linger", metavar="DUR", callback=_duration, default="2s", show_default=True,
              help="After the worker exits, how long its leftovers may live before TERM (then KILL).")
@click.option("--platform", metavar="NAME", help="heroku, render, fly, railway, cloudrun, ecs, kubernetes, "
                                                   "systemd, docker, none [default: detected].")
@click.option("--platform-timeout", metavar="DUR", callback=_duration,
              help="How long the platform waits after its stop signal before its SIGKILL.")
@click.option("--stop-signals", metavar="LIST", callback=_signal_list,
              help="Signals that start a stop [default: TERM,INT,QUIT].")
@click.option("--name", metavar="NAME", help="Process name in logs [default: the command's name].")
@click.option("--log-format", type=click.Choice(FORMATS), default="auto", show_default=True,
              envvar="GRACESHELL_LOG_FORMAT", help="auto = console on a TTY, JSON otherwise.")
@click.option("--log-level", type=click.Choice(list(LEVELS)), default="info", show_default=True,
              envvar="GRACESHELL_LOG_LEVEL")
@click.argument("command", nargs=-1, metavar="COMMAND [ARG]...")
def run_command(command: tuple[str, ...], **options: Any) -> None:
    from graceshell.ladder import LadderError, parse_ladder_spec
    from graceshell.logs import Logger
    from graceshell.plan import make_plan

    ladder = None
    if options["ladder"] is not None:
        try:
            ladder = parse_ladder_spec(options["ladder"])
        except LadderError as exc:
            raise UsageError(f"--ladder: {exc}") from None
    plan = make_plan(
        list(command), name=options["name"], platform=options["platform"],
        platform_timeout_s=options["platform_timeout"], budget=options["budget"], ladder=ladder,
        stop_signals=options["stop_signals"], remap=options["remap"],
        second_signal=options["second_signal"], linger=options["linger"])
    log = Logger(options["log_format"], options["log_level"])
    from graceshell.supervisor import run

    try:
        code = run(plan, log)
    except FileNotFoundError:
        raise GraceshellError(f"{plan.argv[0]}: command not found", NOT_FOUND_EXIT) from None
    except (PermissionError, IsADirectoryError, OSError) as exc:
        reason = exc.strerror or str(exc)
        raise GraceshellError(f"{plan.argv[0]}: cannot execute: {reason.lower()}", NOT_EXECUTABLE_EXIT) from None
    sys.exit(code)


def _fail(message: str, code: int) -> NoReturn:
    try:
        sys.stderr.write(f"graceshell: error: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script and of `python -m graceshell`."""
    try:
        code = cli.main(args=argv, prog_name="graceshell", standalone_mode=False)
    except click.UsageError as exc:
        _fail(exc.format_message().replace("\n", " "), USAGE_EXIT)
    except click.Abort:
        _fail("aborted", 130)
    except GraceshellError as exc:
        _fail(str(exc), exc.exit_code)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
