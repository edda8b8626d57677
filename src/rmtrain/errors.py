"""The one exception type for mistakes a user can fix; the CLI prints it without a traceback."""


class RmtrainError(Exception):
    """A user-facing error whose message names the fix."""


class Interrupted(RmtrainError):
    """Stopped by Ctrl-C (SIGINT); the CLI exits with the shell's code for it, 130."""
