"""What every command shares: a parser whose mistakes are one line, range-checked numbers,
and how a command ends (a UserError is one line on stderr and exit status 2)."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from typing import NoReturn

from trainables.core.errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block), raised as a UserError."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see --help)")


def parser(doc: str, prog: str) -> Parser:
    """A command's parser; its description is the first paragraph of the module's doc."""
    return Parser(
        prog=prog,
        description=(doc or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def number(
    kind: type = int,
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
) -> Callable[[str], float]:
    """An argparse ``type`` that parses ``kind`` and checks its range (``above``: strictly)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low:g}, got {text}")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"must be above {above:g}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:g}, got {text}")
        return value

    return parse


def run(main: Callable[[], int], cleanup: Callable[[], None] | None = None) -> NoReturn:
    """Run a command's ``main``: a UserError is one line and exit status 2, Ctrl-C exit
    status 130. ``cleanup`` runs last; a Ctrl-C during it cuts it short, quietly."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        code = main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    if cleanup is not None:
        try:
            cleanup()
        except KeyboardInterrupt:
            code = code or 130
    sys.exit(code)
