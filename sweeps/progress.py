"""One line per trial epoch and one per finished trial, instead of Tune's status tables."""
from __future__ import annotations

import sys
import time

from ray.tune import Callback

from trainables import metrics as M


def _f(value, spec=".3f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


class ProgressCallback(Callback):
    def __init__(self, variant, total: int):
        self.variant = variant
        self.total = total
        self.done = 0
        self.started = time.monotonic()

    def _name(self, trial) -> str:
        return f"{self.variant(trial.config)} s{trial.config.get('seed', 0)}"

    def _print(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:7.0f}s {self.done}/{self.total} done] {text}", file=sys.stdout,
              flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        max_epochs = trial.config.get("max_epochs", "?")
        self._print(f"{self._name(trial)} epoch {result.get(M.EPOCH)}/{max_epochs} "
                    f"train_loss {_f(result.get(M.TRAIN_LOSS))} "
                    f"val_loss {_f(result.get(M.VAL_LOSS))} val_acc {_f(result.get(M.VAL_ACC))} "
                    f"({_f(result.get(M.EPOCH_TIME), '.1f')}s)")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        last = trial.last_result or {}
        reason = last.get(M.STOP_REASON) or M.ASHA
        self._print(f"{self._name(trial)} finished: {reason} after {last.get(M.EPOCH, 0)} "
                    f"epochs, best val_loss {_f(last.get(M.BEST_VAL_LOSS))} at epoch "
                    f"{last.get(M.BEST_EPOCH, '-')}, test_acc {_f(last.get(M.TEST_ACC))}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done += 1
        self._print(f"{self._name(trial)} FAILED (see the error column of the table)")
