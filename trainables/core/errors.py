"""The one exception type for mistakes a user can fix."""


class UserError(Exception):
    """A problem in the user's input: the message names it and says how to fix it.

    The command line prints the message as one line and exits with status 2.
    """


def unpickling_reason(exc: BaseException) -> str:
    """What torch's weights-only unpickler refused, in a few words (its message goes on to
    suggest weights_only=False, which is exactly what must not be done with such a file)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "Unsupported" in line or "unsupported" in line:
            return line.split(". ")[0][:160]
    return (lines[0] if lines else type(exc).__name__)[:160]
