"""The one exception type the CLI turns into a one-line message and exit code 2."""


class RnnquantError(Exception):
    """A user-facing error: bad input, not a bug. ``str(err)`` is the whole message."""
