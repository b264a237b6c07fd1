"""The library speaks through ``logging``: each module logs to its own logger under
"trainables" (``logging.getLogger(__name__)``): progress and what it chose at INFO, what the
user should act on at WARNING. Nothing is printed until something shows them: the sweep
command and a trial's worker call ``show_lines()``, which prints each line as it is, alone,
on stderr; a notebook may call it too, or configure logging as it likes."""

from __future__ import annotations

import logging
import sys

ROOT = "trainables"


class _Lines(logging.Handler):
    """Each record's message alone, on the stderr of the moment (a redirect or a test's
    capture included), flushed: the lines the tool printed before it logged them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:
            self.handleError(record)


def show_lines() -> None:
    """Print the library's INFO lines and above on stderr, here and only here (they do not
    go on to the root logger as well); once, however often it is called."""
    logger = logging.getLogger(ROOT)
    if not any(isinstance(h, _Lines) for h in logger.handlers):
        logger.addHandler(_Lines())
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.propagate = False
