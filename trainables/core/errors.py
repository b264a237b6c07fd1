"""The one exception type for mistakes a user can fix."""

from __future__ import annotations

import re

# a setting named in a message: `folds`, `folds=5`, `lr=0.001`, `data=DIR`
SETTING = re.compile(r"`([a-z][a-z0-9_]*)(?:=([^`]*))?`")


class UserError(Exception):
    """A problem in the user's input: the message names it and says how to fix it.

    The library names a setting between backticks, by its name: ```folds=5```, ```lr=0.001```.
    ``str(error)`` shows it as the Python API takes it (``folds=5``); the command line shows
    it as its flag (``--folds 5``, ``--set lr=0.001``: sweeps/cli.py), prints the message as
    one line and exits with status 2.
    """

    @property
    def marked(self) -> str:
        """The message with its settings marked, for a layer that names them otherwise."""
        return super().__str__()

    def __str__(self) -> str:
        return SETTING.sub(lambda m: m[0][1:-1], self.marked)


def number_problem(
    value: object,
    kind: type,
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
) -> str | None:
    """What is wrong with a numeric setting's value (None: nothing), as the command line's
    range-checked flags and the Python API's arguments both check it."""
    expected = "an integer" if kind is int else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"expected {expected}, got {value!r}"
    if kind is int and not isinstance(value, int):
        return f"expected {expected}, got {value!r}"
    if value != value or value in (float("inf"), float("-inf")):
        return f"expected a finite number, got {value!r}"
    if low is not None and value < low:
        return f"must be at least {low:g}, got {value}"
    if above is not None and value <= above:
        return f"must be above {above:g}, got {value}"
    if high is not None and value > high:
        return f"must be at most {high:g}, got {value}"
    return None


def unpickling_reason(exc: BaseException) -> str:
    """What torch's weights-only unpickler refused, in a few words (its message goes on to
    suggest weights_only=False, which is exactly what must not be done with such a file)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "Unsupported" in line or "unsupported" in line:
            return line.split(". ")[0][:160]
    return (lines[0] if lines else type(exc).__name__)[:160]
