"""Errors shared by the whole package."""


class UserError(Exception):
    """A problem with the user's input or environment, reported as one clear line.

    The CLI prints it without a traceback and exits with status 2.
    """
