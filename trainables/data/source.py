"""What a data root holds: an image folder (one subfolder per class; split later) or a root
holding ``train/``, ``val/`` and ``test/`` class folders (used as given)."""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from trainables.errors import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DataSource:
    """Image paths relative to ``root``, their classes and (for a pre-split root) their
    splits."""

    root: Path
    class_names: tuple[str, ...]
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    splits: tuple[str, ...] | None  # None: not split yet

    @property
    def presplit(self) -> bool:
        return self.splits is not None


def visible(entry: Path) -> bool:
    """Not a hidden or system entry (.DS_Store, .ipynb_checkpoints, __MACOSX, Thumbs.db)."""
    return not entry.name.startswith((".", "__")) and entry.name != "Thumbs.db"


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and visible(p))


def images_under(folder: Path) -> list[Path]:
    """Every visible file under ``folder`` (recursively, sorted) with an image extension."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if visible(Path(d)))
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if visible(path) and path.suffix.lower() in IMAGE_EXTENSIONS:
                found.append(path)
    return found


def discover(root: str | os.PathLike) -> DataSource:
    """Scan a data root. Raises UserError for a root that cannot be trained on."""
    root = Path(root).expanduser()
    if not root.exists():
        raise UserError(f"--data {root}: no such directory; point it at a folder "
                        "with one subfolder of images per class")
    if not root.is_dir():
        raise UserError(f"--data {root}: is a file, not a directory; point it at a folder "
                        "with one subfolder of images per class")
    root = root.resolve()
    if all((root / split).is_dir() for split in SPLITS):
        return _discover_presplit(root)
    classes = _class_dirs(root)
    paths, labels = [], []
    for label, class_dir in enumerate(classes):
        for path in images_under(class_dir):
            paths.append(path.relative_to(root).as_posix())
            labels.append(label)
    source = DataSource(root, tuple(c.name for c in classes), tuple(paths), tuple(labels), None)
    check_classes(source)
    return source


def _discover_presplit(root: Path) -> DataSource:
    per_split = {split: [c.name for c in _class_dirs(root / split)] for split in SPLITS}
    if not per_split["train"] == per_split["val"] == per_split["test"]:
        train = set(per_split["train"])
        diffs = [f"{split} has {sorted(set(names) ^ train)}" for split, names in per_split.items()
                 if split != "train" and set(names) != train]
        raise UserError(f"--data {root}: train/val/test class folders differ ({'; '.join(diffs)} "
                        "beyond train's); give every split the same class folders")
    classes = per_split["train"]
    paths, labels, splits = [], [], []
    for split in SPLITS:
        for label, name in enumerate(classes):
            for path in images_under(root / split / name):
                paths.append(path.relative_to(root).as_posix())
                labels.append(label)
                splits.append(split)
    source = DataSource(root, tuple(classes), tuple(paths), tuple(labels), tuple(splits))
    check_classes(source)
    return source


def check_classes(source: DataSource) -> None:
    where = f"--data {source.root}"
    if not source.paths:
        raise UserError(f"{where}: found no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in "
                        "class subfolders; put each class's images in a folder named after it")
    counts = Counter(source.labels)
    empty = [name for i, name in enumerate(source.class_names) if counts[i] == 0]
    if empty:
        raise UserError(f"{where}: class folder(s) {', '.join(empty)} hold no usable image; "
                        "add images or remove the folder")
    if len(source.class_names) < 2:
        raise UserError(f"{where}: only one class ({source.class_names[0]}); a classifier "
                        "needs at least two class folders")


def limit_per_class(source: DataSource, n: int) -> DataSource:
    """Keep the first ``n`` images of each class (of each split when pre-split, where val and
    test keep an eighth as many): for --smoke and --max-per-class."""
    kept = Counter()
    keep = []
    for i, label in enumerate(source.labels):
        key = (label, source.splits[i] if source.splits else None)
        if source.splits and source.splits[i] != "train":
            limit = max(1, n // 8)
        else:
            limit = n
        if kept[key] < limit:
            kept[key] += 1
            keep.append(i)
    return subset(source, keep)


def subset(source: DataSource, keep: list[int]) -> DataSource:
    return replace(
        source,
        paths=tuple(source.paths[i] for i in keep),
        labels=tuple(source.labels[i] for i in keep),
        splits=tuple(source.splits[i] for i in keep) if source.splits else None,
    )
