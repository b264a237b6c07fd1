"""Read a finished experiment back: its result table, its split, and each trial's saved
validation and test probabilities, checked to line up image by image.

The ensemble and report commands start here. Experiments on remote storage are read from a
local copy (``aws s3 sync URI DIR`` or the like).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from sweeps.experiment.files import RESULTS_CSV, SPLIT_CSV, SWEEP_JSON
from sweeps.experiment.storage import Store
from trainables.core import metrics as M
from trainables.core.csvcells import unguarded
from trainables.core.errors import UserError
from trainables.trial import checkpoint


@dataclass
class TrialPredictions:
    """One trial's probabilities from its best weights (lowest validation loss): for a
    trial run with test-time views (``tta``), their mean, which is what its export
    predicts."""

    trial_id: str
    variant: str
    directory: Path  # the checkpoint they came from
    val_probs: np.ndarray
    test_probs: np.ndarray


@dataclass
class Experiment:
    root: Path
    table: pd.DataFrame  # results.csv
    val_ids: np.ndarray  # image paths of the validation split, in split.csv order
    test_ids: np.ndarray
    val_labels: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    variant_keys: tuple[str, ...] = ()  # the study's, as sweep.json recorded them
    varied: tuple[str, ...] = ()  # every config key whose value differed between trials
    data_root: str = ""  # where the images were, as sweep.json recorded it
    searched: bool = False  # a searcher chose the trials (no per-variant table)
    # a cross-validated experiment: every usable image's path, label and fold
    all_ids: np.ndarray | None = None
    all_labels: np.ndarray | None = None
    folds: np.ndarray | None = None

    @property
    def fold_count(self) -> int:
        return int(self.folds.max()) + 1 if self.folds is not None and len(self.folds) else 0

    def for_fold(self, fold: int) -> Experiment:
        """Fold ``fold`` of a cross-validated experiment as an experiment of its own: its
        trials, its validation and test images (what each after-sweep command reads)."""
        from trainables.data.split import fold_splits

        if not 0 <= fold < self.fold_count:
            raise UserError(f"`fold={fold}`: {self.root} has {self.fold_count or 'no'} folds")
        splits = np.asarray(fold_splits(self.folds.tolist(), fold, self.fold_count))
        val, test = splits == "val", splits == "test"
        table = (
            self.table[self.table["fold"].astype(int) == fold]
            if "fold" in self.table
            else self.table.iloc[:0]
        )
        return replace(
            self,
            table=table,
            val_ids=self.all_ids[val],
            test_ids=self.all_ids[test],
            val_labels=self.all_labels[val],
            test_labels=self.all_labels[test],
        )

    def trial_dir(self, trial_id: str) -> Path | None:
        found = sorted(p for p in self.root.glob(f"*_{trial_id}") if p.is_dir())
        return found[0] if found else None

    def latest_checkpoint(self, trial_id: str) -> Path | None:
        """The trial's newest checkpoint folder, if the trial and a checkpoint exist."""
        trial_dir = self.trial_dir(trial_id)
        return checkpoint.latest(trial_dir) if trial_dir else None

    def results(self) -> pd.DataFrame:
        """Trials that produced a result (not failed, not stuck at chance)."""
        return self.table[~self.table["stop_reason"].isin(M.NOT_A_RESULT)]


def load_experiment(path: str | Path) -> Experiment:
    root = Path(path)
    if "://" in str(path):
        raise UserError(
            f"{path}: experiments on remote storage are read from a local copy; "
            "sync it to a folder first and pass that folder"
        )
    if not (root / RESULTS_CSV).exists():
        raise UserError(
            f"{root}: no {RESULTS_CSV} here; pass the experiment folder that "
            "sweeps/run.py printed (STORAGE/NAME)"
        )
    if not (root / SPLIT_CSV).exists():
        raise UserError(
            f"{root}: no {SPLIT_CSV}; without the experiment's split the trials' "
            "probabilities cannot be checked to line up"
        )
    table = _read_csv(root / RESULTS_CSV, dtype={"trial_id": str, "variant": str}, na_values=[""])
    if not {"trial_id", "variant", "stop_reason", "best_epoch", M.BEST_VAL_LOSS, M.TEST_ACC} <= set(
        table.columns
    ):
        raise UserError(
            f"{root / RESULTS_CSV}: not a result table of sweeps/run.py (columns "
            "missing); pass the experiment folder that sweeps/run.py printed"
        )
    # every name as written: a class folder "007" stays "007", not the number 7
    split = _read_csv(root / SPLIT_CSV, dtype={"path": str, "class": str, "split": str})
    if not {"path", "class", "label", "split"} <= set(split.columns):
        raise UserError(f"{root / SPLIT_CSV}: not a split of sweeps/run.py (columns missing)")
    classes = split[split["split"] != "skipped"].drop_duplicates("label").sort_values("label")
    val, test = split[split["split"] == "val"], split[split["split"] == "test"]
    sweep = _sweep_json(root)
    plan = sweep.get("plan") if isinstance(sweep.get("plan"), dict) else {}
    folded = {}
    if "fold" in split.columns:
        used = split[split["split"] != "skipped"]
        try:
            folded = dict(
                all_ids=used["path"].to_numpy(str),
                all_labels=used["label"].to_numpy(np.int64),
                folds=used["fold"].astype(int).to_numpy(),
            )
        except (TypeError, ValueError):
            raise UserError(
                f"{root / SPLIT_CSV}: its fold column holds something other than "
                "fold numbers; the experiment folder is damaged"
            ) from None
    return Experiment(
        root,
        table,
        val["path"].to_numpy(str),
        test["path"].to_numpy(str),
        val["label"].to_numpy(np.int64),
        test["label"].to_numpy(np.int64),
        classes["class"].astype(str).tolist(),
        tuple(str(k) for k in sweep.get("variant_keys") or ()),
        tuple(str(k) for k in plan.get("varied") or ()),
        str(sweep.get("data") or ""),
        bool(plan.get("searched")),
        **folded,
    )


def read_sweep_json(store: Store, flag: str) -> dict:
    """sweep.json as a dict, the one parser of it; a missing, damaged or foreign file is a
    UserError that names ``flag`` (the option that pointed here)."""
    if not store.exists(SWEEP_JSON):
        raise UserError(
            f"{flag} {store}: no {SWEEP_JSON} there; point it at an experiment "
            "folder that sweeps/run.py wrote"
        )
    try:
        saved = json.loads(store.read_text(SWEEP_JSON))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(
            f"{flag} {store}: {SWEEP_JSON} is damaged ({type(exc).__name__}); "
            "start the sweep anew under another `name`"
        ) from None
    if not isinstance(saved, dict):
        raise UserError(
            f"{flag} {store}: {SWEEP_JSON} is not a sweep record; start the sweep "
            "anew under another `name`"
        )
    return saved


def _sweep_json(root: Path) -> dict:
    """sweep.json, or nothing when it is missing or unreadable (the report then shows one
    bar per variant and no importance)."""
    try:
        return read_sweep_json(Store.from_location(str(root)), str(root))
    except (OSError, UserError):
        return {}


def _read_csv(path: Path, **kwargs) -> pd.DataFrame:
    try:  # text cells as they were before the CSV-injection guard (trainables/core/csvcells.py)
        return unguarded(pd.read_csv(path, keep_default_na=False, **kwargs))
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(
            f"{path}: not a readable table ({type(exc).__name__}); the experiment "
            "folder is damaged or still being written"
        ) from None


def load_trial(experiment: Experiment, trial_id: str) -> TrialPredictions:
    """One trial's saved probabilities, or UserError saying why they cannot be used."""
    rows = experiment.table[experiment.table["trial_id"] == trial_id]
    if rows.empty:
        raise UserError(
            f"trial {trial_id}: not in {experiment.root / RESULTS_CSV}; its "
            "trial_id column lists the trials"
        )
    latest = experiment.latest_checkpoint(trial_id)
    saved = checkpoint.read_predictions(latest) if latest else None
    if saved is None:
        raise UserError(
            f"trial {trial_id}: no saved probabilities (it ended before its first "
            "validation); leave it out"
        )
    saved = checkpoint.as_exported(saved)
    chosen = {}
    for part, ids, labels in (
        ("val", experiment.val_ids, experiment.val_labels),
        ("test", experiment.test_ids, experiment.test_labels),
    ):
        got = saved.get(f"{part}_ids")
        if got is None or got.dtype.kind not in "US":
            raise UserError(
                f"trial {trial_id}: its {part} probabilities carry no image paths "
                "(saved by an older version); re-run it to use it here"
            )
        if len(got) != len(ids) or not np.array_equal(got.astype(str), ids):
            raise UserError(
                f"trial {trial_id}: its {part} probabilities were made on a "
                f"different split than {experiment.root / SPLIT_CSV} "
                f"({len(got)} images against {len(ids)}, or other images); "
                "not mixing it in"
            )
        if not np.array_equal(saved[f"{part}_labels"], labels):
            raise UserError(
                f"trial {trial_id}: its {part} labels differ from the split's; not mixing it in"
            )
        probs = chosen[part] = saved[f"{part}_probs"]
        if probs.shape != (len(ids), len(experiment.class_names)):
            raise UserError(
                f"trial {trial_id}: {part} probabilities of shape {probs.shape}, "
                f"expected ({len(ids)}, {len(experiment.class_names)})"
            )
    return TrialPredictions(
        trial_id, str(rows.iloc[0]["variant"]), latest, chosen["val"], chosen["test"]
    )


def load_trials(
    experiment: Experiment, trial_ids: list[str] | None = None, strict: bool = True
) -> tuple[list[TrialPredictions], list[str]]:
    """The named trials (every trial with a result when None). With ``strict`` a trial that
    cannot be used is an error; otherwise it is left out and its reason returned."""
    ids = trial_ids if trial_ids is not None else experiment.results()["trial_id"].tolist()
    loaded, refused = [], []
    for trial_id in ids:
        try:
            loaded.append(load_trial(experiment, str(trial_id)))
        except UserError as error:
            if strict:
                raise
            refused.append(str(error))
    return loaded, refused
