"""The small picklable handle that every trial gets, and the data report: what was found,
used, skipped, copied and how imbalanced it is."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from trainables.core.csvcells import cell
from trainables.core.errors import UserError
from trainables.data.decode import content_digest, decode_cached, file_hashes
from trainables.data.source import SPLITS, DataSource, check_classes, subset
from trainables.data.split import (
    SKIPPED,
    fold_splits,
    stratified_folds,
    stratified_split,
)


@dataclass(frozen=True)
class DataHandle:
    """All a trial needs to find its data: small, picklable, shipped with each trial.

    ``rows`` index the decoded array of ``files`` (every file found, usable or not);
    ``labels`` and ``splits`` run parallel to ``rows``.
    """

    root: str
    files: tuple[str, ...]
    digest: str
    cache_dir: str
    class_names: tuple[str, ...]
    rows: tuple[int, ...]
    labels: tuple[int, ...]
    splits: tuple[str, ...]  # of a folded handle: fold 0's
    folds: tuple[int, ...] = ()  # cross-validation: each image's fold (its test fold)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def fold_count(self) -> int:
        return max(self.folds) + 1 if self.folds else 0

    def for_fold(self, fold: int) -> DataHandle:
        """The handle whose splits are fold ``fold``'s (split.fold_splits)."""
        if not 0 <= fold < self.fold_count:
            raise UserError(
                f"bad value fold={fold}: this data has "
                f"{self.fold_count or 'no'} folds (`folds=K` sets them)"
            )
        return replace(self, splits=tuple(fold_splits(self.folds, fold, self.fold_count)))

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.splits) == split)

    def images(
        self, load_size: int, interpolation: str = "bilinear", progress: bool = False
    ) -> np.ndarray:
        """The decoded uint8 images (memory-mapped, N x S x S x 3) at this size."""
        cache = decode_cached(
            Path(self.root),
            self.files,
            self.digest,
            load_size,
            Path(self.cache_dir),
            progress,
            interpolation,
        )
        return np.load(cache.images, mmap_mode="r")


def prepare(
    source: DataSource,
    load_size: int,
    cache_dir: Path,
    split_seed: int = 0,
    progress: bool = True,
    interpolation: str = "bilinear",
    folds: int = 0,
) -> tuple[DataHandle, dict]:
    """Decode (once), drop unreadable images, split (into ``folds`` cross-validation folds
    when given), and return the handle and a data report."""
    if folds and source.presplit and source.folds is None:
        raise UserError(
            f"`folds={folds}`: needs an image folder to split into folds (or the "
            "split.csv of a folded experiment), not a split into train/val/test; "
            "drop `folds` or `split_file`, or pass the unsplit folder"
        )
    if folds and source.folds is None:  # before any decoding: the counts are known
        found = np.bincount(source.labels, minlength=len(source.class_names))
        if found.min() < folds:
            name = source.class_names[int(found.argmin())]
            raise UserError(
                f"`folds={folds}`: class '{name}' has {int(found.min())} "
                f"image(s); `folds={folds}` needs at least {folds} per class: use "
                "fewer folds"
            )
    if not folds and source.folds is not None:
        count = max(source.folds) + 1
        raise UserError(
            f"`split_file` holds the {count} folds of a cross-validated "
            f"experiment: pass `folds={count}` to reuse them"
        )
    hashes = file_hashes(source.root, source.paths, progress)
    digest = content_digest(source.paths, hashes)
    cache = decode_cached(
        source.root, source.paths, digest, load_size, Path(cache_dir), progress, interpolation
    )
    bad = {**cache.bad, **{path: why for path, _, why in source.rejected}}
    if source.splits is not None:  # a reused split: what it skipped stays out
        bad.update(
            {
                path: "skipped in the reused split.csv (unreadable when it was drawn)"
                for path, split in zip(source.paths, source.splits)
                if split == SKIPPED and path not in bad
            }
        )
    keep = [i for i, path in enumerate(source.paths) if path not in bad]
    usable = subset(source, keep)
    if not usable.paths:
        raise UserError(
            f"`data={source.root}`: none of the {len(bad)} images could be read; "
            "check that they are real image files (data_report.json would list "
            "why)"
        )
    check_classes(usable)
    groups = duplicate_groups([hashes[i] for i in keep])
    fold_ids: list[int] = []
    if folds:
        if usable.folds is not None:  # reused: exactly as recorded
            fold_ids = list(usable.folds)
            if max(fold_ids) + 1 != folds or min(fold_ids) < 0:
                raise UserError(
                    f"`folds={folds}`: the reused split.csv holds "
                    f"{max(fold_ids) + 1} folds; pass `folds={max(fold_ids) + 1}`"
                )
        else:
            group_of = list(range(len(keep)))
            for group in groups:  # copies of one image share a fold, so they cannot leak
                for i in group:
                    group_of[i] = group[0]
            fold_ids = stratified_folds(
                usable.labels, group_of, folds, split_seed, usable.class_names
            )
        splits = fold_splits(fold_ids, 0, folds)
    elif usable.presplit:
        splits = list(usable.splits)
        for split in SPLITS:
            if split not in splits:
                raise UserError(f"`data={source.root}`: the {split}/ folder has no usable image")
    else:
        splits = stratified_split(usable.labels, seed=split_seed, class_names=usable.class_names)
        for group in groups:  # copies of one image stay together, so they cannot leak
            for i in group[1:]:
                splits[i] = splits[group[0]]
    handle = DataHandle(
        str(source.root),
        source.paths,
        digest,
        str(cache_dir),
        source.class_names,
        tuple(keep),
        usable.labels,
        tuple(splits),
        tuple(fold_ids),
    )
    report = data_report(source, handle, bad)
    if fold_ids:
        report["folds"] = {name: [0] * folds for name in handle.class_names}
        for label, fold in zip(handle.labels, fold_ids):
            report["folds"][handle.class_names[label]][fold] += 1
    report.update(duplicates_report(handle, groups))
    return handle, report


def duplicate_groups(hashes: list[str]) -> list[list[int]]:
    """Indices of files with identical bytes, one list per image that occurs more than once."""
    by_hash: dict[str, list[int]] = {}
    for i, file_hash in enumerate(hashes):
        by_hash.setdefault(file_hash, []).append(i)
    return [group for group in by_hash.values() if len(group) > 1]


def duplicates_report(handle: DataHandle, groups: list[list[int]]) -> dict:
    """Exact copies: how many, which cross splits (leakage), which carry different labels."""

    def describe(group):
        return [
            {
                "path": handle.files[handle.rows[i]],
                "split": handle.splits[i],
                "class": handle.class_names[handle.labels[i]],
            }
            for i in group
        ]

    leaks = [describe(g) for g in groups if len({handle.splits[i] for i in g}) > 1]
    conflicts = [describe(g) for g in groups if len({handle.labels[i] for i in g}) > 1]
    return {
        "duplicate_images": sum(len(g) - 1 for g in groups),
        "leakage": leaks,
        "label_conflicts": conflicts,
    }


def data_report(source: DataSource, handle: DataHandle, bad: dict[str, str]) -> dict:
    counts = {name: {split: 0 for split in SPLITS} for name in handle.class_names}
    for label, split in zip(handle.labels, handle.splits):
        counts[handle.class_names[label]][split] += 1
    label_of = dict(zip(source.paths, source.labels))
    label_of.update({path: label for path, label, _ in source.rejected})
    skipped = {name: [] for name in handle.class_names}
    for path, why in sorted(bad.items()):
        skipped[source.class_names[label_of[path]]].append({"path": path, "reason": why})
    train = [counts[name]["train"] for name in handle.class_names]
    return {
        "imbalance_ratio": round(max(train) / max(1, min(train)), 2),
        "root": str(source.root),
        "presplit": source.presplit,
        "classes": list(handle.class_names),
        "images_found": len(source.paths) + len(source.rejected),
        "images_used": len(handle.rows),
        "images_skipped": len(bad),
        "counts": counts,
        "skipped": {name: items for name, items in skipped.items() if items},
    }


def split_csv(handle: DataHandle, report: dict) -> str:
    """The split as CSV text, one row per image found (unreadable ones as 'skipped'), so it
    can be audited and reused with --split-file (read back by split.apply_split_file). A
    folded experiment adds each image's fold; its split column is fold 0's."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    folded = bool(handle.folds)
    writer.writerow(["path", "class", "label", "split", *(["fold"] if folded else [])])
    for i, (row, label, split) in enumerate(zip(handle.rows, handle.labels, handle.splits)):
        writer.writerow(
            [
                cell(handle.files[row]),
                cell(handle.class_names[label]),
                label,
                split,
                *([handle.folds[i]] if folded else []),
            ]
        )
    for name, items in report["skipped"].items():
        for item in items:
            writer.writerow(
                [
                    cell(item["path"]),
                    cell(name),
                    handle.class_names.index(name),
                    SKIPPED,
                    *([""] if folded else []),
                ]
            )
    return out.getvalue()
