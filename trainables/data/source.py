"""What a data root holds: an image folder (one subfolder per class; split later) or a root
holding ``train/``, ``val/`` and ``test/`` class folders (used as given)."""

from __future__ import annotations

import errno
import os
import stat
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from trainables.core.errors import UserError

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
    # files named like images that cannot be read at all: (path as shown, label, reason)
    rejected: tuple[tuple[str, int, str], ...] = ()
    folds: tuple[int, ...] | None = None  # from a reused split.csv of a folded experiment

    @property
    def presplit(self) -> bool:
        return self.splits is not None


def visible(entry: Path) -> bool:
    """Not a hidden or system entry (.DS_Store, .ipynb_checkpoints, __MACOSX, Thumbs.db)."""
    return not entry.name.startswith((".", "__")) and entry.name != "Thumbs.db"


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in a file name (os.fsdecode's surrogates)
        return False
    return True


def _class_dirs(folder: Path) -> list[Path]:
    found = sorted(p for p in folder.iterdir() if p.is_dir() and visible(p))
    for path in found:
        if not _utf8(path.name):  # class names go into every table, report and export
            raise UserError(
                f"`data`: class folder {shown(path)}: its name is not valid UTF-8 "
                "text; rename the folder"
            )
    return found


def scan(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The image files under ``folder``, and those named like images that cannot be read,
    each with the reason (never opened: a fifo or a device would block the reader)."""
    found, rejected = [], []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if visible(Path(d)))
        odd_folder = not _utf8(os.path.relpath(dirpath, folder))
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if not visible(path) or path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            reason = (
                "a folder on its path is not named in valid UTF-8 text; rename the folder"
                if odd_folder
                else unreadable(path)
            )
            (rejected.append((path, reason)) if reason else found.append(path))
    return found, rejected


def unreadable(path: Path) -> str:
    """Why ``path`` cannot be read as an image file, or "" when it can be tried."""
    if not _utf8(path.name):
        return "its name is not valid UTF-8 text; rename the file"
    try:
        info = os.stat(path)  # follows links
    except FileNotFoundError:
        return "a symbolic link to nothing (a broken link)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop"
        return f"cannot be read ({exc.strerror})"
    if not stat.S_ISREG(info.st_mode):
        kind = (
            "a named pipe"
            if stat.S_ISFIFO(info.st_mode)
            else "a socket"
            if stat.S_ISSOCK(info.st_mode)
            else "a device"
            if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
            else "not a file"
        )
        return f"{kind}, not an image file"
    if not os.access(path, os.R_OK):
        return "permission denied"
    return ""


def shown(path: str | Path) -> str:
    """A path as text that can be written anywhere (undecodable bytes replaced)."""
    return os.fsencode(str(path)).decode("utf-8", "replace")


def discover(root: str | os.PathLike) -> DataSource:
    """Scan a data root. Raises UserError for a root that cannot be trained on."""
    root = Path(root).expanduser()
    if not root.exists():
        raise UserError(
            f"`data={root}`: no such directory; point it at a folder "
            "with one subfolder of images per class"
        )
    if not root.is_dir():
        raise UserError(
            f"`data={root}`: is a file, not a directory; point it at a folder "
            "with one subfolder of images per class"
        )
    root = root.resolve()
    present = [split for split in SPLITS if (root / split).is_dir()]
    if len(present) == len(SPLITS):
        return _discover_presplit(root)
    if present:
        missing = [f"{split}/" for split in SPLITS if split not in present]
        raise UserError(
            f"`data={root}`: has {' and '.join(p + '/' for p in present)} but no "
            f"{' or '.join(missing)}; a pre-split root needs all of train/ val/ "
            "test/ (or give a folder of class folders, to be split here)"
        )
    classes = _class_dirs(root)
    paths, labels, rejected = [], [], []
    for label, class_dir in enumerate(classes):
        found, bad = scan(class_dir)
        for path in found:
            paths.append(path.relative_to(root).as_posix())
            labels.append(label)
        rejected += [(shown(path.relative_to(root).as_posix()), label, why) for path, why in bad]
    source = DataSource(
        root, tuple(c.name for c in classes), tuple(paths), tuple(labels), None, tuple(rejected)
    )
    check_classes(source)
    return source


def _discover_presplit(root: Path) -> DataSource:
    per_split = {split: [c.name for c in _class_dirs(root / split)] for split in SPLITS}
    if not per_split["train"] == per_split["val"] == per_split["test"]:
        every = set().union(*map(set, per_split.values()))
        lacks = [
            f"{split}/ lacks {', '.join(sorted(every - set(names)))}"
            for split, names in per_split.items()
            if every - set(names)
        ]
        raise UserError(
            f"`data={root}`: the splits' class folders differ ({'; '.join(lacks)}); "
            "give train/, val/ and test/ the same class folders"
        )
    classes = per_split["train"]
    paths, labels, splits, rejected = [], [], [], []
    for split in SPLITS:
        for label, name in enumerate(classes):
            found, bad = scan(root / split / name)
            for path in found:
                paths.append(path.relative_to(root).as_posix())
                labels.append(label)
                splits.append(split)
            rejected += [
                (shown(path.relative_to(root).as_posix()), label, why) for path, why in bad
            ]
    source = DataSource(
        root, tuple(classes), tuple(paths), tuple(labels), tuple(splits), tuple(rejected)
    )
    check_classes(source)
    return source


def check_classes(source: DataSource) -> None:
    where = f"`data={source.root}`"
    if not source.paths:
        raise UserError(
            f"{where}: found no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in "
            "class subfolders; put each class's images in a folder named after it"
        )
    counts = Counter(source.labels)
    empty = [name for i, name in enumerate(source.class_names) if counts[i] == 0]
    if empty:
        raise UserError(
            f"{where}: class folder(s) {', '.join(empty)} hold no usable image; "
            "add images or remove the folder"
        )
    if len(source.class_names) < 2:
        raise UserError(
            f"{where}: only one class ({source.class_names[0]}); a classifier "
            "needs at least two class folders"
        )


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
        folds=tuple(source.folds[i] for i in keep) if source.folds else None,
    )
