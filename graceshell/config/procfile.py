"""Procfile and .env files, read the way foreman and honcho read them.

Procfile: one `name: command` per line; blank lines and `#` comments are
skipped; names are letters, digits, `_` and `-`. A name given twice is an
error (foreman would silently keep one).

.env: `NAME=value` lines, optional `export ` prefix, `#` comments; single
quotes keep the text as it is, double quotes understand \\n, \\t, \\" and \\\\.
The real environment wins over .env, as in foreman.
"""

from __future__ import annotations

import re
import shlex

from graceshell.errors import UsageError, read_user_file, shown

TYPE_CHECKING = False  # typing costs a noticeable share of start-up; it is for the checker only
if TYPE_CHECKING:
    from collections.abc import Iterator

PROCESS_NAME = re.compile(r"[A-Za-z0-9_-]+")
_PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")
_ENV_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")
# Characters that only a shell understands: when a command has none of them,
# graceshell runs it directly and the worker is graceshell's own child.
_SHELL_SYNTAX = set("$`|&;<>()*?[]{}~!#\\\n")
# Operators that make a command more than one process, so `exec` cannot apply
# (looked for outside quotes).
_COMPOUND = re.compile(r"[|&;()\n]|\b(?:if|for|while|until|case)\b")
_QUOTED = re.compile(r"'[^']*'|\"(?:[^\"\\]|\\.)*\"")
# Invisible characters that no command or value needs, NUL first of all (exec
# and the environment cannot carry it): rejected where they are read, so that
# `check` refuses what `run` could not start. Tab is an ordinary blank.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


class Procfile:
    __slots__ = ("path", "processes", "lines")

    def __init__(self, path: str, processes: dict[str, str], lines: dict[str, int]) -> None:
        self.path = path
        self.processes = processes  # name -> command, in file order
        self.lines = lines  # name -> line number


def read_procfile(path: str) -> Procfile:
    return parse_procfile(read_user_file(path, "Procfile not found (use --procfile FILE)"), path)


def parse_procfile(text: str, path: str = "Procfile") -> Procfile:
    processes: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, line in _lines(text, path):
        match = _PROCFILE_LINE.match(line)
        if match is None:
            name = line.partition(":")[0].strip()
            if ":" in line and not PROCESS_NAME.fullmatch(name):
                reason = f"process type {shown(name)} may use only letters, digits, _ and -"
            elif ":" in line:
                reason = f"process type {shown(name)} has no command"
            else:
                reason = "expected NAME: COMMAND"
            raise UsageError(f"{path}:{number}: {reason}")
        name, command = match.group(1), match.group(2).strip()
        if not command:
            raise UsageError(f"{path}:{number}: process type {shown(name)} has no command")
        if name in processes:
            raise UsageError(f"{path}:{number}: process type {shown(name)} is already defined on line {lines[name]}")
        processes[name] = command
        lines[name] = number
    if not processes:
        raise UsageError(f"{path}: no processes (expected NAME: COMMAND lines)")
    return Procfile(path, processes, lines)


def command_argv(command: str, where: str) -> list[str]:
    """argv for a Procfile command: split directly, or `sh -c` when it needs a shell.

    A simple command that needs the shell only for expansion ($PORT) is run
    as `sh -c 'exec ...'`, so the worker replaces the shell and still gets
    graceshell's signals itself.
    """
    words = None
    if not (_SHELL_SYNTAX & set(command)):
        try:
            words = shlex.split(command)
        except ValueError as exc:
            raise UsageError(f"{where}: cannot parse command: {exc}") from None
        if words and "=" in words[0].split("/")[0]:
            words = None  # a leading VAR=value assignment is shell syntax
        elif words and words[0] == "exec":
            words = words[1:]  # the shell's "replace me": without a shell, the command itself
    if words:
        return words
    if not _COMPOUND.search(_QUOTED.sub("''", command)) and not command.lstrip().startswith("exec "):
        return ["sh", "-c", f"exec {command}"]
    return ["sh", "-c", command]


def command_words(argv: list[str]) -> list[str]:
    """The words of the command `argv` runs, for reading its options: the
    inverse of command_argv for `sh -c 'exec ...'`; a script's words as the
    shell would split them, as far as shlex can tell (else none)."""
    if argv[:2] != ["sh", "-c"] or len(argv) < 3:
        return argv
    try:
        words = shlex.split(argv[2])
    except ValueError:
        return []
    return words[1:] if words[:1] == ["exec"] else words


def read_dotenv(path: str) -> dict[str, str]:
    return parse_dotenv(read_user_file(path, "env file not found"), path)


def parse_dotenv(text: str, path: str = ".env") -> dict[str, str]:
    env: dict[str, str] = {}
    for number, line in _lines(text, path):
        match = _ENV_LINE.match(line)
        if match is None:
            raise UsageError(f"{path}:{number}: expected NAME=value")
        name, value = match.group(1), match.group(2).strip()
        env[name] = _unquote(value, f"{path}:{number}")
    return env


def _lines(text: str, path: str) -> Iterator[tuple[int, str]]:
    """(number, stripped line) of each line that is not blank or a comment.

    Lines end at \\n only (and \\r\\n): str.splitlines() would also break at
    form feeds and other separators, and the numbers would not match an editor's.
    """
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        bad = _CONTROL.search(line)
        if bad is not None:
            raise UsageError(f"{path}:{number}: control character {bad.group()!r} in column "
                             f"{raw.index(bad.group()) + 1}; remove it (is this a text file?)")
        yield number, line


def _unquote(value: str, where: str) -> str:
    if value[:1] in ("'", '"'):
        quote = value[0]
        end = _closing_quote(value, quote)
        if end < 0:
            raise UsageError(f"{where}: unterminated {quote} quote")
        rest = value[end + 1:].strip()
        if rest and not rest.startswith("#"):
            raise UsageError(f"{where}: unexpected text after the closing quote")
        inner = value[1:end]
        if quote == "'":
            return inner
        escapes = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "$": "$"}
        return re.sub(r"\\(.)", lambda m: escapes.get(m.group(1), "\\" + m.group(1)), inner)
    # Unquoted: a " #" starts a comment, as in foreman.
    return value.split(" #", 1)[0].rstrip()


def _closing_quote(value: str, quote: str) -> int:
    index = 1
    while index < len(value):
        if value[index] == "\\" and quote == '"':
            index += 2
            continue
        if value[index] == quote:
            return index
        index += 1
    return -1
