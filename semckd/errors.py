"""User-facing errors: the CLI prints these as one line (problem and fix) and exits non-zero."""


class UserError(Exception):
    """Bad input from the user (files, names, options). Message = what is wrong + how to fix it."""
