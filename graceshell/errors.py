"""Errors the user can act on, and the exit codes they map to.

Every error graceshell reports is one line on stderr; these exceptions carry
that line and the documented exit status, so no caller prints a traceback.
"""

from __future__ import annotations

USAGE_EXIT = 2  # usage and configuration errors
NOT_EXECUTABLE_EXIT = 126
NOT_FOUND_EXIT = 127
INTERNAL_ERROR_EXIT = 70  # EX_SOFTWARE: graceshell itself failed (run and start)

# Files the user names (graceshell.yml, Procfile, .env) are a few hundred
# bytes; the bound keeps a mistake such as `--env /dev/zero` from eating memory.
MAX_USER_FILE = 1024 * 1024
# An error line quotes what the user wrote, but a screenful of it helps nobody.
MAX_MESSAGE = 1000
MAX_SHOWN = 80


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` with line breaks and other control characters escaped, at most `limit` long."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def shown(value: object, limit: int = MAX_SHOWN) -> str:
    """`value` as an error message quotes it: its repr, on one line, cut to `limit`."""
    if isinstance(value, (list, dict, set, tuple)):
        return "a mapping" if isinstance(value, dict) else "a set" if isinstance(value, set) else "a list"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        # repr of a 5000-digit number raises ValueError; its length is enough here
        return f"a number of about {int(value.bit_length() * 0.30103)} digits"
    return one_line(repr(value), limit)


class GraceshellError(Exception):
    """A problem reported as one line, ending the command with `exit_code`."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(one_line(message))
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(GraceshellError):
    """Bad flags, values or configuration: exit 2, nothing started."""

    exit_code = USAGE_EXIT


def read_user_file(path: str, missing: str, error: type[GraceshellError] = UsageError) -> str:
    """The text of a file the user named (config, Procfile, .env), or their error in one line.

    Read in binary and bounded, so that a device, a huge file or a file in
    another encoding ends in an error naming the file (and the line), not in
    a hang or a traceback. A UTF-8 byte-order mark is dropped.
    """
    name = one_line(path)
    try:
        # Not O_NONBLOCK: `--config <(generate)` is a pipe whose writer may be slow.
        with open(path, "rb") as handle:
            data = handle.read(MAX_USER_FILE + 1)
    except FileNotFoundError:
        raise error(f"{name}: {missing}") from None
    except OSError as exc:
        raise error(f"{name}: cannot read: {exc.strerror or exc}") from None
    except ValueError:  # a path with a NUL byte
        raise error(f"{name}: cannot read: the name has a NUL byte") from None
    if len(data) > MAX_USER_FILE:
        raise error(f"{name}: larger than {MAX_USER_FILE >> 20} MiB; is this the right file?")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise error(f"{name}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8") from None
