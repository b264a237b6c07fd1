"""The one exception type for mistakes a user can fix."""


class UserError(Exception):
    """A problem in the user's input: the message names it and says how to fix it.

    The command line prints the message as one line and exits with status 2.
    """
