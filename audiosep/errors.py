"""User-facing errors: the CLI prints them as one line and exits non-zero (no traceback)."""


class UserError(Exception):
    """Bad input from the user (a file, a flag, a config): the message says what and where."""
