"""Train/val/test splits and cross-validation folds: drawn here (stratified, seeded), or
reused from an earlier experiment's split.csv, which every experiment writes."""

from __future__ import annotations

import csv
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from trainables.core.csvcells import uncell
from trainables.core.errors import UserError
from trainables.data.source import SPLITS, DataSource

SKIPPED = "skipped"  # split.csv's mark for an image that could not be decoded


def _named(label: int, class_names) -> str:
    """A class as the user named it (its folder), not by its label index."""
    return repr(class_names[label]) if class_names is not None else str(label)


def stratified_split(
    labels: list[int] | tuple[int, ...],
    fractions=(0.8, 0.1, 0.1),
    seed: int = 0,
    class_names=None,
) -> list[str]:
    """Assign each sample to train/val/test, class by class, shuffled with ``seed``.

    Every class gets at least one validation and one test image; raises UserError for a
    class with fewer than three images (named by ``class_names``, when given).
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    out = np.empty(len(labels), dtype=object)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        if len(idx) < 3:
            raise UserError(
                f"class {_named(label, class_names)} has {len(idx)} usable image(s); at "
                "least 3 are "
                "needed to split into train/val/test"
            )
        rng.shuffle(idx)
        n_val = max(1, int(round(len(idx) * fractions[1])))
        n_test = max(1, int(round(len(idx) * fractions[2])))
        out[idx[:n_val]] = "val"
        out[idx[n_val : n_val + n_test]] = "test"
        out[idx[n_val + n_test :]] = "train"
    return out.tolist()


def stratified_folds(labels, groups, folds: int, seed: int = 0, class_names=None) -> list[int]:
    """Each image's fold (0..folds-1), stratified by class, copies of one image (same
    ``groups`` id) always in one fold: scikit-learn's StratifiedGroupKFold, shuffled with
    ``seed``. Raises UserError for a class with fewer images than folds."""
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.asarray(labels)
    counts = np.bincount(labels)
    if counts.min() < folds:
        raise UserError(
            f"class {_named(int(counts.argmin()), class_names)} has {int(counts.min())} usable "
            f"image(s); `folds={folds}` needs at least {folds} per class: use "
            "fewer folds"
        )
    out = np.empty(len(labels), dtype=np.int64)
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its note on classes with few members
        for fold, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
            out[test] = fold
    return out.tolist()


def fold_splits(folds: list[int] | tuple[int, ...], fold: int, count: int) -> list[str]:
    """The train/val/test split of fold ``fold`` of ``count``: its own images are the test
    set, the next fold's (cyclically) the validation set, the rest train. Every image is
    tested exactly once and validates exactly once over the folds."""
    val = (fold + 1) % count
    return ["test" if f == fold else "val" if f == val else "train" for f in folds]


def apply_split_file(
    source: DataSource, split_file: str | os.PathLike, resumed: str | None = None
) -> DataSource:
    """Use the split of an earlier experiment (its split.csv) instead of drawing a new one;
    ``resumed``: the experiment being resumed, whose own split this is (for messages)."""
    path = Path(split_file).expanduser()
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise UserError(
            f"`split_file={path}`: cannot be read ({exc.strerror}); pass the "
            "split.csv of an earlier experiment"
        ) from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(
            f"`split_file={path}`: not a CSV text file ({type(exc).__name__}); "
            "pass the split.csv of an earlier experiment"
        ) from None
    if not rows or not {"path", "split"} <= set(rows[0]):
        raise UserError(
            f"`split_file={path}`: needs 'path' and 'split' columns, as the "
            "split.csv that every experiment writes"
        )
    for row in rows:  # as written, before the CSV-injection guard (trainables/core/csvcells.py)
        row["path"] = uncell(row["path"])
    assigned = {row["path"]: row["split"] for row in rows}
    fold_of = {}
    if any(row.get("fold") not in (None, "") for row in rows):
        try:
            fold_of = {row["path"]: int(row["fold"]) for row in rows if row["split"] != SKIPPED}
        except (TypeError, ValueError):
            raise UserError(
                f"`split_file={path}`: its 'fold' column holds something other "
                "than fold numbers; pass the split.csv of an earlier experiment"
            ) from None
    bad = sorted({str(s) for s in assigned.values() if s not in (*SPLITS, SKIPPED)})
    if bad:
        raise UserError(f"`split_file={path}`: unknown split(s) {bad}; use train, val, test")
    missing = [p for p in source.paths if p not in assigned]
    if missing and resumed:
        raise UserError(
            f"`resume={resumed}`: {len(missing)} image(s) under {source.root} are "
            f"not in its split.csv (first: {missing[0]}): the images changed since "
            "the sweep began; restore them, or start a new sweep"
        )
    if missing:
        raise UserError(
            f"`split_file={path}`: {len(missing)} image(s) of `data` are not in it "
            f"(first: {missing[0]}); the file must come from the same data"
        )
    # what it skipped stays in (prepare() skips it again): the same files as when the split
    # was drawn, so the decoded images of that sweep are found in the cache, not decoded again
    folds = tuple(fold_of.get(path, -1) for path in source.paths) if fold_of else None
    return replace(source, splits=tuple(assigned[path] for path in source.paths), folds=folds)
