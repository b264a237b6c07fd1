"""The small picklable handle that every trial gets, and the data report: what was found,
used, skipped, copied and how imbalanced it is."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainables.data.decode import content_digest, decode_cached, file_hashes
from trainables.data.source import SPLITS, DataSource, check_classes, subset
from trainables.data.split import SKIPPED, stratified_split
from trainables.errors import UserError


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
    splits: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.splits) == split)

    def images(self, load_size: int, interpolation: str = "bilinear",
               progress: bool = False) -> np.ndarray:
        """The decoded uint8 images (memory-mapped, N x S x S x 3) at this size."""
        cache = decode_cached(Path(self.root), self.files, self.digest, load_size,
                              Path(self.cache_dir), progress, interpolation)
        return np.load(cache.images, mmap_mode="r")


def prepare(source: DataSource, load_size: int, cache_dir: Path, split_seed: int = 0,
            progress: bool = True, interpolation: str = "bilinear") -> tuple[DataHandle, dict]:
    """Decode (once), drop unreadable images, split, and return the handle and a data report."""
    hashes = file_hashes(source.root, source.paths, progress)
    digest = content_digest(source.paths, hashes)
    cache = decode_cached(source.root, source.paths, digest, load_size, Path(cache_dir),
                          progress, interpolation)
    bad = {**cache.bad, **{path: why for path, _, why in source.rejected}}
    if source.splits is not None:  # a reused split: what it skipped stays out
        bad.update({path: "skipped in the reused split.csv (unreadable when it was drawn)"
                    for path, split in zip(source.paths, source.splits)
                    if split == SKIPPED and path not in bad})
    keep = [i for i, path in enumerate(source.paths) if path not in bad]
    usable = subset(source, keep)
    if not usable.paths:
        raise UserError(f"--data {source.root}: none of the {len(bad)} images could be read; "
                        "check that they are real image files (data_report.json would list "
                        "why)")
    check_classes(usable)
    groups = duplicate_groups([hashes[i] for i in keep])
    if usable.presplit:
        splits = list(usable.splits)
        for split in SPLITS:
            if split not in splits:
                raise UserError(f"--data {source.root}: the {split}/ folder has no usable image")
    else:
        splits = stratified_split(usable.labels, seed=split_seed)
        for group in groups:  # copies of one image stay together, so they cannot leak
            for i in group[1:]:
                splits[i] = splits[group[0]]
    handle = DataHandle(str(source.root), source.paths, digest, str(cache_dir),
                        source.class_names, tuple(keep), usable.labels, tuple(splits))
    report = data_report(source, handle, bad)
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
        return [{"path": handle.files[handle.rows[i]], "split": handle.splits[i],
                 "class": handle.class_names[handle.labels[i]]} for i in group]

    leaks = [describe(g) for g in groups if len({handle.splits[i] for i in g}) > 1]
    conflicts = [describe(g) for g in groups if len({handle.labels[i] for i in g}) > 1]
    return {"duplicate_images": sum(len(g) - 1 for g in groups),
            "leakage": leaks, "label_conflicts": conflicts}


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
    can be audited and reused with --split-file (read back by split.apply_split_file)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "class", "label", "split"])
    for row, label, split in zip(handle.rows, handle.labels, handle.splits):
        writer.writerow([handle.files[row], handle.class_names[label], label, split])
    for name, items in report["skipped"].items():
        for item in items:
            writer.writerow([item["path"], name, handle.class_names.index(name), SKIPPED])
    return out.getvalue()
