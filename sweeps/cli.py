"""What every command shares: a parser whose mistakes are one line, range-checked numbers,
and how a command ends (a UserError is one line on stderr and exit status 2)."""

from __future__ import annotations

import argparse
import atexit
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import NoReturn

from trainables.core.errors import SETTING, UserError, number_problem


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
        problem = number_problem(value, kind, low, high, above)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    return parse


def as_flags(message: str) -> str:
    """A library message's settings as the command line names them: ```folds=5``` is
    ``--folds 5``, ```split_file``` is ``--split-file``, a trial-config key ```lr=0.001```
    is ``--set lr=0.001`` (a key that is also a flag of run.py, max_epochs, is the flag)."""
    from sweeps.driver.spec import SweepSpec
    from trainables.core.config import FIELD_TYPES

    flags = {f.name for f in fields(SweepSpec)}

    def named(match: re.Match) -> str:
        name, value = match[1], match[2]
        if name == "overrides":  # the Python API's trial-config fields
            return "--set"
        # a trial-config key, but not one run.py also has as a flag (max_epochs), nor the
        # fold, which is no --set key (report.py's --fold picks one)
        if name in FIELD_TYPES and name not in flags and name != "fold":
            return f"--set {name}={value}" if value is not None else f"--set {name}=..."
        flag = "--" + name.replace("_", "-")
        # a switch (`trust_state=True`) is the flag alone
        return flag if value in (None, "True") else f"{flag} {value}"

    return SETTING.sub(named, message)


# where this tool's own code is: a warning raised there is one of its own lines
_OWN = tuple(
    f"{Path(__file__).resolve().parents[1] / room}{os.sep}"
    for room in ("sweeps", "trainables", "search_spaces")
)
_python_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """The tool's own warnings (an old key, an old keyword, weights not found) as one line,
    ``warning: ...`` with settings as flags, like its other lines; another library's as
    Python shows them (file, line and the source line)."""
    if not str(filename).startswith(_OWN):
        _python_showwarning(message, category, filename, lineno, file, line)
        return
    try:
        print(f"warning: {as_flags(str(message))}", file=file or sys.stderr, flush=True)
    except OSError:
        pass  # as Python's own: a stream that is gone loses the warning


def run(main: Callable[[], int], cleanup: Callable[[], None] | None = None) -> NoReturn:
    """Run a command's ``main``: a UserError is one line and exit status 2, Ctrl-C exit
    status 130, and the tool's own warnings one line each. ``cleanup`` runs last; a Ctrl-C
    during it cuts it short, quietly."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.showwarning = _show_warning
    try:
        code = main()
    except UserError as exc:
        print(f"error: {as_flags(exc.marked)}", file=sys.stderr)
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


def as_process(entry: Callable[[], None]) -> NoReturn:
    """Run a command as this whole process (``python sweeps/X.py``, the console script) and
    end it at once: Python's exit handlers run and the streams are flushed, but the
    interpreter's teardown, which frees every module of torch, Ray and pandas one by one
    and writes nothing, is skipped (0.7-1.4 s of every command; benchmarks/README.md,
    section 3). Where a thread that a normal exit waits for still runs, the normal exit."""
    try:
        entry()
        code: object = 0
    except SystemExit as ended:
        code = ended.code
    if any(t.is_alive() and not t.daemon for t in threading.enumerate()[1:]):
        sys.exit(code)
    if code is None:
        code = 0
    elif not isinstance(code, int):  # as sys.exit("message") does
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # the reader went away (| head): as Python's docs say
        code = code or 1
    os._exit(code)
