"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input: a missing file, an unknown name, a value out of range.

    The message names the problem and, where possible, what to pass or install instead.
    """
