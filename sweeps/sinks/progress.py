"""One line per trial epoch and one per finished trial, instead of Tune's status tables."""

from __future__ import annotations

import sys
import time

from sweeps.sinks.base import Sink
from trainables.core import metrics as M


def _f(value, spec=".3f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


class ProgressLines(Sink):
    """A recorder sink (``sweeps/driver/recorder.py``) that prints to stdout: the seconds
    since this command started, and how many trials are done (counting those finished
    before a resume)."""

    def __init__(self, total: int):
        self.total = total
        self.ended: set[str] = set()  # a trial retried after an error counts once
        self.started = time.monotonic()

    @property
    def done(self) -> int:
        return len(self.ended)

    def resumed(self, finished: list[str]) -> None:
        # Tune restores the sinks as pickled when the sweep began: their clock and count
        # are those of the first command's start
        self.ended = set(finished)
        self.started = time.monotonic()

    @staticmethod
    def _name(entry) -> str:
        fold = entry.config.get("fold", -1)
        folded = f" f{fold}" if fold >= 0 else ""
        return f"{entry.variant} s{entry.config.get('seed', 0)}{folded}"

    def _print(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        print(
            f"[{elapsed:7.0f}s {self.done}/{self.total} done] {text}", file=sys.stdout, flush=True
        )

    def result(self, entry, result: dict) -> None:
        max_epochs = entry.config.get("max_epochs", "?")
        self._print(
            f"{self._name(entry)} epoch {result.get(M.EPOCH)}/{max_epochs} "
            f"train_loss {_f(result.get(M.TRAIN_LOSS))} "
            f"val_loss {_f(result.get(M.VAL_LOSS))} val_acc {_f(result.get(M.VAL_ACC))} "
            f"({_f(result.get(M.EPOCH_TIME), '.1f')}s)"
        )

    def end(self, entry) -> None:
        self.ended.add(entry.trial_id)
        if entry.status == "ERROR":
            self._print(f"{self._name(entry)} FAILED (its error follows the table at the end)")
            return
        last = entry.last
        self._print(
            f"{self._name(entry)} finished: {entry.stop_reason} after "
            f"{last.get(M.EPOCH, 0)} epochs, best val_loss "
            f"{_f(last.get(M.BEST_VAL_LOSS))} at epoch {last.get(M.BEST_EPOCH, '-')}, "
            f"test_acc {_f(last.get(M.TEST_ACC))}"
        )
