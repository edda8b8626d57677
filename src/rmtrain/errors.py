"""The one exception type for mistakes a user can fix; the CLI prints it without a traceback."""


class RmtrainError(Exception):
    """A user-facing error whose message names the fix."""
