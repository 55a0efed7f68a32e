"""User-facing errors: a bad recipe, row, path or model id. The CLI prints them and exits with 2.

Tracebacks are for bugs; anything a user can fix by editing their input raises `UserError`.
"""


class UserError(Exception):
    """A mistake in the user's input. `str(err)` is the whole message shown to the user."""

    exit_code = 2
