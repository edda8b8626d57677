"""The one exception type for mistakes a user can fix; the CLI prints it without a traceback."""


class RmtrainError(Exception):
    """A user-facing error whose message names the fix."""


class Interrupted(RmtrainError):
    """Stopped by Ctrl-C (SIGINT); the CLI exits with the shell's code for it, 130."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message cut to its first line (libraries raise pages), or its type's
    name when it has none: for one-line errors that quote the cause."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__
