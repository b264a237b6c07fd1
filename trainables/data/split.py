"""Train/val/test splits: drawn here (stratified, seeded), or reused from an earlier
experiment's split.csv, which every experiment writes."""
from __future__ import annotations

import csv
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from trainables.data.source import SPLITS, DataSource
from trainables.errors import UserError


SKIPPED = "skipped"  # split.csv's mark for an image that could not be decoded


def stratified_split(labels: list[int] | tuple[int, ...], fractions=(0.8, 0.1, 0.1),
                     seed: int = 0) -> list[str]:
    """Assign each sample to train/val/test, class by class, shuffled with ``seed``.

    Every class gets at least one validation and one test image; raises UserError for a
    class with fewer than three images.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    out = np.empty(len(labels), dtype=object)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        if len(idx) < 3:
            raise UserError(f"class {label} has {len(idx)} usable image(s); at least 3 are "
                            "needed to split into train/val/test")
        rng.shuffle(idx)
        n_val = max(1, int(round(len(idx) * fractions[1])))
        n_test = max(1, int(round(len(idx) * fractions[2])))
        out[idx[:n_val]] = "val"
        out[idx[n_val:n_val + n_test]] = "test"
        out[idx[n_val + n_test:]] = "train"
    return out.tolist()


def apply_split_file(source: DataSource, split_file: str | os.PathLike,
                     resumed: str | None = None) -> DataSource:
    """Use the split of an earlier experiment (its split.csv) instead of drawing a new one;
    ``resumed``: the experiment being resumed, whose own split this is (for messages)."""
    path = Path(split_file).expanduser()
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise UserError(f"--split-file {path}: cannot be read ({exc.strerror}); pass the "
                        "split.csv of an earlier experiment") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"--split-file {path}: not a CSV text file ({type(exc).__name__}); "
                        "pass the split.csv of an earlier experiment") from None
    if not rows or not {"path", "split"} <= set(rows[0]):
        raise UserError(f"--split-file {path}: needs 'path' and 'split' columns, as the "
                        "split.csv that every experiment writes")
    assigned = {row["path"]: row["split"] for row in rows}
    bad = sorted({str(s) for s in assigned.values() if s not in (*SPLITS, SKIPPED)})
    if bad:
        raise UserError(f"--split-file {path}: unknown split(s) {bad}; use train, val, test")
    missing = [p for p in source.paths if p not in assigned]
    if missing and resumed:
        raise UserError(f"--resume {resumed}: {len(missing)} image(s) under {source.root} are "
                        f"not in its split.csv (first: {missing[0]}): the images changed since "
                        "the sweep began; restore them, or start a new sweep")
    if missing:
        raise UserError(f"--split-file {path}: {len(missing)} image(s) of --data are not in it "
                        f"(first: {missing[0]}); the file must come from the same data")
    # what it skipped stays in (prepare() skips it again): the same files as when the split
    # was drawn, so the decoded images of that sweep are found in the cache, not decoded again
    return replace(source, splits=tuple(assigned[path] for path in source.paths))
