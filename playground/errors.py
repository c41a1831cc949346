"""The one error type for a user's mistake.

Anything that raises `UserError` is a problem with the user's input (a config value, a data file,
a checkpoint), not with our code: the entry point prints its message on one line and exits with
status 2, without a traceback. A bug in our code raises anything else and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input; the message names the key or file and says what would be right."""
