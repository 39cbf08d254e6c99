"""The `graceshell` command line.

Parsing only: every decision is made in plan.py and carried out by the
supervisor. Errors end as one line on stderr and a documented exit status
(2 for usage), never a traceback.

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
from graceshell.errors import NOT_EXECUTABLE_EXIT, NOT_FOUND_EXIT, USAGE_EXIT, GraceshellError, UsageError
from graceshell.logs import FORMATS, LEVELS
from graceshell.signals import parse_signal

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NoReturn

RUN_DESCRIPTION = """\
Supervise one worker through a platform stop.

  graceshell run -- celery -A app worker
  graceshell run --budget 25s --ladder 'QUIT@budget-5s' -- rq worker

The worker runs in its own session, so signals aimed at graceshell's group
never reach its children. On the first stop signal (TERM, INT, QUIT) the
worker alone gets the ladder's first signal; later steps fire at their
offsets; at the budget the whole tree is SIGKILLed, before the platform's
own deadline. Other signals are passed to the worker as they are.

exit status: the worker's; 128+N when it died of signal N; 2 usage error;
126 not executable; 127 not found; 70 internal error."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line instead of usage + exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _remap(text: str) -> tuple[int, int]:
    source, sep, target = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not FROM:TO (e.g. TERM:QUIT)")
    try:
        return parse_signal(source), parse_signal(target)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _signal_list(text: str) -> frozenset[int]:
    try:
        return frozenset(parse_signal(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--budget", metavar="DUR", type=_duration,
        help="time from the first stop signal to the SIGKILL of the whole tree "
             "(default: platform timeout - 5s)")
    add("--ladder", metavar="SPEC",
        help="escalation steps, e.g. 'TERM@0s,QUIT@budget-5s,KILL@25s'; KILL at the budget is implied")
    add("--remap", metavar="FROM:TO", type=_remap, action="append", default=[],
        help="send TO to the worker when graceshell receives FROM (repeatable)")
    add("--second-signal", choices=("escalate", "forward", "ignore"), default="escalate",
        help="what a second stop signal does (default: escalate)")
    add("--linger", metavar="DUR", type=_duration, default=2.0,
        help="after the worker exits, how long its leftovers may live before TERM, then KILL (default: 2s)")
    add("--platform", metavar="NAME",
        help="heroku, render, fly, railway, cloudrun, ecs, kubernetes, systemd, docker, none (default: detected)")
    add("--platform-timeout", metavar="DUR", type=_duration,
        help="how long the platform waits after its stop signal before its SIGKILL")
    add("--stop-signals", metavar="LIST", type=_signal_list,
        help="signals that start a stop (default: TERM,INT,QUIT)")
    add("--name", metavar="NAME", help="process name in logs (default: the command's name)")
    add("--log-format", metavar="FORMAT", default=os.environ.get("GRACESHELL_LOG_FORMAT") or "auto",
        help="auto (console on a TTY, JSON otherwise), json, logfmt, console; $GRACESHELL_LOG_FORMAT")
    add("--log-level", metavar="LEVEL", default=os.environ.get("GRACESHELL_LOG_LEVEL") or "info",
        help="debug, info, warning, error (default: info); $GRACESHELL_LOG_LEVEL")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="graceshell", description="graceshell: graceful shutdown for background-job workers.")
    parser.add_argument("--version", action="version", version=f"graceshell {__version__}")
    commands = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)
    run = commands.add_parser(
        "run", help="supervise one worker through a platform stop",
        usage="graceshell run [OPTIONS] -- COMMAND [ARG]...", description=RUN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_options(run)
    run.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _check_choice(flag: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise UsageError(f"{flag}: {value!r} is not one of {', '.join(choices)}")
    return value


def run_command(options: argparse.Namespace) -> int:
    from graceshell.ladder import LadderError, parse_ladder_spec
    from graceshell.logs import Logger
    from graceshell.plan import make_plan

    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    ladder = None
    if options.ladder is not None:
        try:
            ladder = parse_ladder_spec(options.ladder)
        except LadderError as exc:
            raise UsageError(f"--ladder: {exc}") from None
    log_format = _check_choice("--log-format", options.log_format, FORMATS)
    log_level = _check_choice("--log-level", options.log_level, list(LEVELS))
    plan = make_plan(
        command, name=options.name, platform=options.platform, platform_timeout_s=options.platform_timeout,
        budget=options.budget, ladder=ladder, stop_signals=options.stop_signals,
        remap=dict(options.remap), second_signal=options.second_signal, linger=options.linger)
    from graceshell.supervisor import run

    try:
        return run(plan, Logger(log_format, log_level))
    except FileNotFoundError:
        raise GraceshellError(f"{plan.argv[0]}: command not found", NOT_FOUND_EXIT) from None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise GraceshellError(f"{plan.argv[0]}: cannot execute: {reason}", NOT_EXECUTABLE_EXIT) from None


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
        options = build_parser().parse_args(argv)
        code = run_command(options)
    except GraceshellError as exc:
        _fail(str(exc), exc.exit_code)
    sys.exit(code)


__all__ = ["main", "build_parser", "USAGE_EXIT"]
