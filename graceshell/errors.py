"""Errors the user can act on, and the exit codes they map to.

Every error graceshell reports is one line on stderr; these exceptions carry
that line and the documented exit status, so no caller prints a traceback.
"""

from __future__ import annotations

USAGE_EXIT = 2  # usage and configuration errors
NOT_EXECUTABLE_EXIT = 126
NOT_FOUND_EXIT = 127


class GraceshellError(Exception):
    """A problem reported as one line, ending the command with `exit_code`."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(GraceshellError):
    """Bad flags, values or configuration: exit 2, nothing started."""

    exit_code = USAGE_EXIT


def read_user_file(path: str, missing: str, error: type[GraceshellError] = UsageError) -> str:
    """The text of a file the user named (config, Procfile, .env), or their error in one line."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
