"""A trial checkpoint's file layout: the one module that writes and reads it.

    checkpoint_NNNNNN/
      state.pt          everything a restarted trial needs to go on exactly (model,
                        optimizer, schedule, random generators, loop state)
      best_model.pt     weights of the best validation epoch so far
      predictions.npz   validation and test probabilities of those weights, with labels and
                        the images' paths as split.csv writes them
      test_report.json  per-class precision, recall, F1 and the confusion matrix on test
      trial.json        the trial record (trainables/trial/build.py)
      final.json        in the last checkpoint of a trial that ended (which has no
                        state.pt: it is never resumed): its last reported metrics

Reading needs only json and numpy (and torch for the weights), so the after-sweep commands
import this module, not the training code.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trainables.core.errors import UserError, unpickling_reason

if TYPE_CHECKING:
    from trainables.model.record import TrialRecord

STATE_FILE = "state.pt"
BEST_WEIGHTS_FILE = "best_model.pt"
PREDICTIONS_FILE = "predictions.npz"
TEST_REPORT_FILE = "test_report.json"
RECORD_FILE = "trial.json"
FINAL_FILE = "final.json"  # the last checkpoint of a trial that ended: its last metrics
CHECKPOINT_GLOB = "checkpoint_*"


class CheckpointPolicy:
    """When a trial writes a checkpoint: at the epoch it stops on its own, at every epoch
    where the scheduler may stop it (ASHA's rungs: after such a report the trial may get no
    other chance), and otherwise as often as keeps checkpoints under ``budget`` of its
    training time. A checkpoint's cost is measured each time one is written; before the
    first, it is estimated from the bytes it will hold. With ``budget`` 0, every epoch.

    Between checkpoints the epochs report their metrics only; a trial restarted after a
    crash goes on from its last checkpoint and runs the epochs since again, with the same
    random streams, so it ends where it would have ended."""

    WRITE_RATE = 150e6  # bytes per second to estimate the first checkpoint's cost with

    def __init__(self, budget: float, stop_points: tuple[int, ...] = ()):
        self.budget = budget
        self.stop_points = set(stop_points)
        self.cost: float | None = None  # seconds the last checkpoint took
        self.since = 0.0  # training seconds since the last checkpoint

    def due(
        self, epoch: int, epoch_seconds: float, stopping: bool, state: dict | None = None
    ) -> bool:
        self.since += epoch_seconds
        if stopping or epoch in self.stop_points or self.budget <= 0:
            return True
        cost = self.cost if self.cost is not None else state_bytes(state) / self.WRITE_RATE
        return self.since * self.budget >= cost

    def saved(self, seconds: float) -> None:
        self.cost, self.since = seconds, 0.0


def state_bytes(state: dict | None) -> int:
    """Bytes of the tensors a checkpoint of ``state`` holds (model, optimizer, best weights)."""
    import torch

    total, todo = 0, [state]
    while todo:
        item = todo.pop()
        if torch.is_tensor(item):
            total += item.numel() * item.element_size()
        elif isinstance(item, dict):
            todo += list(item.values())
        elif isinstance(item, (list, tuple)):
            todo += list(item)
        elif hasattr(item, "best_weights"):  # the loop's FitState
            todo.append(item.best_weights)
    return total


def save(directory: Path, state: dict, record: TrialRecord, final: dict | None = None) -> None:
    """Write a checkpoint: best weights, best predictions, record, and the training state to
    go on from; or, for the last checkpoint of a trial that has ended (``final``: its last
    metrics), no training state, since a finished trial is never resumed: for VGG16 with
    Adam, 550 MB instead of 2.2 GB."""
    import torch

    from trainables.stats.evaluation import per_class_report

    fit_state = state["fit"]
    if final is None:
        light = dict(state, fit=dataclasses.replace(fit_state, best_weights=None, predictions=None))
        torch.save(light, directory / STATE_FILE)
    else:
        (directory / FINAL_FILE).write_text(json.dumps(final, default=str))
    if fit_state.best_weights is not None:
        torch.save(fit_state.best_weights, directory / BEST_WEIGHTS_FILE)
    if fit_state.predictions is not None:
        np.savez(directory / PREDICTIONS_FILE, **fit_state.predictions)
        p = fit_state.predictions
        report = per_class_report(
            p["test_labels"], p["test_probs"].argmax(1), list(record.class_names)
        )
        (directory / TEST_REPORT_FILE).write_text(json.dumps(report, indent=1))
    (directory / RECORD_FILE).write_text(json.dumps(record.to_json(), indent=1))


def _read_json(path: Path) -> dict | None:
    """A checkpoint's JSON file, None when absent; a damaged one is a UserError."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); the checkpoint is damaged") from None


def final_metrics(directory: Path) -> dict | None:
    """The last metrics of a trial that had ended when this checkpoint was written."""
    return _read_json(Path(directory) / FINAL_FILE)


def load(directory: Path) -> dict:
    """The training state to resume from, best weights and predictions included."""
    import torch

    from trainables.trial.loop import FitState

    path = directory / STATE_FILE
    try:  # data only: a crafted state.pt in an experiment folder must not run code
        with torch.serialization.safe_globals([FitState]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = unpickling_reason(exc)
        raise UserError(
            f"{path}: holds objects a checkpoint never has ({reason}); refusing "
            "to load it (it may have been tampered with): delete that checkpoint "
            "folder to resume from an earlier one"
        ) from None
    fit_state = state["fit"]
    if (directory / BEST_WEIGHTS_FILE).exists():
        fit_state.best_weights = read_best_weights(directory)
    fit_state.predictions = read_predictions(directory)
    return state


def latest(trial_dir: Path) -> Path | None:
    """The trial's newest checkpoint folder (Ray Tune keeps one), if it has one."""
    found = sorted(p for p in Path(trial_dir).glob(CHECKPOINT_GLOB) if p.is_dir())
    return found[-1] if found else None


def read_record(directory: Path) -> TrialRecord:
    from trainables.model.record import TrialRecord

    path = Path(directory) / RECORD_FILE
    raw = _read_json(path)
    if raw is None:
        raise UserError(
            f"{directory}: no {RECORD_FILE} (a checkpoint of an older version); "
            "re-run the trial with this version"
        )
    return TrialRecord.from_json(raw, str(path))


def read_predictions(directory: Path) -> dict | None:
    path = Path(directory) / PREDICTIONS_FILE
    if not path.exists():
        return None
    try:
        with np.load(path) as npz:
            return {key: npz[key] for key in npz.files}
    except Exception as exc:  # truncated, not an npz, or not ours (pickled objects refused)
        raise UserError(
            f"{path}: cannot be read ({type(exc).__name__}); the checkpoint is damaged"
        ) from None


def as_exported(saved: dict) -> dict:
    """A trial's saved probabilities as its export predicts them: each split's mean over
    the trial's test-time views where it saved one (``*_probs_tta``), else the plain
    network's (a trial without views, or of a version that did not save their mean)."""
    views = {
        f"{part}_probs": saved[f"{part}_probs_tta"]
        for part in ("val", "test")
        if f"{part}_probs_tta" in saved
    }
    return {**saved, **views}


def read_best_weights(directory: Path) -> dict:
    import torch

    path = Path(directory) / BEST_WEIGHTS_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(
            f"{directory}: no {BEST_WEIGHTS_FILE} (the trial ended before its first validation)"
        ) from None
    except Exception as exc:  # truncated or not a torch file
        raise UserError(
            f"{path}: cannot be read ({type(exc).__name__}); the checkpoint is damaged"
        ) from None


def read_test_report(directory: Path) -> dict | None:
    return _read_json(Path(directory) / TEST_REPORT_FILE)
