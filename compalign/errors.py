"""The one exception type for a user's mistake."""


class UserError(Exception):
    """Bad params, missing data or a wrong checkpoint: the CLI prints it on one line, exit 2.

    A bug stays an ordinary exception with its traceback.
    """
