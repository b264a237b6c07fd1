"""Find images, split them, decode them once, and hand trials a small picklable handle.

A data root is either an image folder (one subfolder per class; split here, stratified
and seeded) or a root holding ``train/``, ``val/`` and ``test/`` class folders (used as
given). Every usable image is decoded once per size into a uint8 array on disk, keyed by
the files' content; trials on a node memory-map that one file instead of decoding again.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image, ImageOps

from trainables.errors import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")
SKIPPED = "skipped"  # split.csv's mark for an image that could not be decoded
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """Where decoded images and the demo data live: $VISIONSWEEP_CACHE or ~/.cache/visionsweep."""
    env = os.environ.get("VISIONSWEEP_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "visionsweep"


@dataclass(frozen=True)
class DataSource:
    """What a data root holds: image paths relative to ``root``, their classes and (for a
    pre-split root) their splits."""

    root: Path
    class_names: tuple[str, ...]
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    splits: tuple[str, ...] | None  # None: not split yet

    @property
    def presplit(self) -> bool:
        return self.splits is not None


def _visible(entry: Path) -> bool:
    return not entry.name.startswith((".", "__")) and entry.name != "Thumbs.db"


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p))


def _images_under(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if _visible(Path(d)))
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if _visible(path) and path.suffix.lower() in IMAGE_EXTENSIONS:
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
        for path in _images_under(class_dir):
            paths.append(path.relative_to(root).as_posix())
            labels.append(label)
    source = DataSource(root, tuple(c.name for c in classes), tuple(paths), tuple(labels), None)
    _check_classes(source)
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
            for path in _images_under(root / split / name):
                paths.append(path.relative_to(root).as_posix())
                labels.append(label)
                splits.append(split)
    source = DataSource(root, tuple(classes), tuple(paths), tuple(labels), tuple(splits))
    _check_classes(source)
    return source


def _check_classes(source: DataSource) -> None:
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
    """Keep the first ``n`` images of each class (of each split when pre-split): for --smoke."""
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
    return _subset(source, keep)


def _subset(source: DataSource, keep: list[int]) -> DataSource:
    return replace(
        source,
        paths=tuple(source.paths[i] for i in keep),
        labels=tuple(source.labels[i] for i in keep),
        splits=tuple(source.splits[i] for i in keep) if source.splits else None,
    )


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


def apply_split_file(source: DataSource, split_file: str | os.PathLike) -> DataSource:
    """Use the split of an earlier experiment (its split.csv) instead of drawing a new one."""
    import csv

    path = Path(split_file).expanduser()
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise UserError(f"--split-file {path}: cannot be read ({exc.strerror}); pass the "
                        "split.csv of an earlier experiment") from None
    if not rows or not {"path", "split"} <= set(rows[0]):
        raise UserError(f"--split-file {path}: needs 'path' and 'split' columns, as the "
                        "split.csv that every experiment writes")
    assigned = {row["path"]: row["split"] for row in rows}
    bad = sorted({s for s in assigned.values() if s not in (*SPLITS, SKIPPED)})
    if bad:
        raise UserError(f"--split-file {path}: unknown split(s) {bad}; use train, val, test")
    missing = [p for p in source.paths if p not in assigned]
    if missing:
        raise UserError(f"--split-file {path}: {len(missing)} image(s) of --data are not in it "
                        f"(first: {missing[0]}); the file must come from the same data")
    keep = [i for i, p in enumerate(source.paths) if assigned[p] != SKIPPED]
    return replace(_subset(source, keep), splits=tuple(assigned[source.paths[i]] for i in keep))


# ---------------------------------------------------------------- decode once

def file_hashes(root: Path, paths: tuple[str, ...]) -> list[str]:
    """sha1 of every file's bytes (read in parallel)."""
    def one(path: str) -> str:
        return hashlib.sha1((root / path).read_bytes()).hexdigest()

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(one, paths))


def content_digest(paths: tuple[str, ...], hashes: list[str]) -> str:
    """Key of a file list: relative paths and file bytes, so moving the root keeps the cache."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}".encode())
    for path, file_hash in zip(paths, hashes):
        digest.update(f"{path}\0{file_hash}\n".encode("utf-8"))
    return digest.hexdigest()[:24]


RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def decode_image(path: Path, size: int, interpolation: str = "bilinear") -> np.ndarray:
    """Decode to RGB as the camera meant it (EXIF rotation), resize the shorter side to
    ``size`` and centre-crop a ``size`` x ``size`` square. Returns HWC uint8."""
    with Image.open(path) as image:
        image.draft("RGB", (size, size))  # JPEG: decode big photos at a reduced scale, fast
        image = ImageOps.exif_transpose(image)
        if image.mode.startswith("I"):  # 16-bit (or 32-bit) grayscale: to 8 bits by depth
            wide = np.asarray(image).astype(np.int64)
            top = 255 if wide.max() <= 255 else 65535 if wide.max() <= 65535 else wide.max()
            image = Image.fromarray((wide * 255 // top).astype(np.uint8))
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")  # transparent areas become white, not black
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
        image = image.convert("RGB")
        width, height = image.size
        scale = size / min(width, height)
        new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
        image = image.resize((new_w, new_h), RESAMPLE[interpolation], reducing_gap=3.0)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        image = image.crop((left, top, left + size, top + size))
        return np.asarray(image, dtype=np.uint8)


@dataclass(frozen=True)
class DecodedCache:
    images: Path  # .npy, shape (len(paths), size, size, 3), uint8
    bad: dict[str, str] = field(default_factory=dict)  # relative path -> why it was skipped


def decode_cached(root: Path, paths: tuple[str, ...], digest: str, size: int,
                  cache_dir: Path, progress: bool = False,
                  interpolation: str = "bilinear") -> DecodedCache:
    """Decode every path at ``size`` once, into ``cache_dir``; later calls only read the index.

    Safe to call from many processes at once: a file lock makes one decode and the rest wait.
    Corrupt or unreadable files get a zero image and are listed in ``bad``.
    """
    folder = Path(cache_dir) / "decoded"
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"{digest}-{size}-{interpolation}"
    npy, meta = stem.with_suffix(".npy"), stem.with_suffix(".json")
    with FileLock(str(stem) + ".lock"):
        if not (npy.exists() and meta.exists()):
            _decode_all(root, paths, size, interpolation, npy, meta, progress)
        bad = json.loads(meta.read_text())["bad"]
    return DecodedCache(npy, bad)


def _decode_all(root: Path, paths, size: int, interpolation: str, npy: Path, meta: Path,
                progress: bool) -> None:
    tmp = npy.with_name(npy.name + ".tmp.npy")
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                      shape=(len(paths), size, size, 3))
    bad: dict[str, str] = {}

    def work(i: int, out: np.ndarray = array) -> None:
        try:
            out[i] = decode_image(root / paths[i], size, interpolation)
        except Exception as exc:  # any undecodable file is skipped, whatever the library raised
            bad[paths[i]] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]

    step = max(1000, len(paths) // 10)
    if progress:
        print(f"decoding {len(paths)} images at {size}px (once; cached for later sweeps)",
              file=sys.stderr, flush=True)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for done, _ in enumerate(pool.map(work, range(len(paths))), 1):
            if progress and done % step == 0 and done < len(paths):
                print(f"decoded {done}/{len(paths)}", file=sys.stderr, flush=True)
    array.flush()
    del array
    os.replace(tmp, npy)
    meta_tmp = meta.with_name(meta.name + ".tmp")
    meta_tmp.write_text(json.dumps({"bad": bad, "count": len(paths), "size": size}))
    os.replace(meta_tmp, meta)


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
    hashes = file_hashes(source.root, source.paths)
    digest = content_digest(source.paths, hashes)
    cache = decode_cached(source.root, source.paths, digest, load_size, Path(cache_dir),
                          progress, interpolation)
    keep = [i for i, path in enumerate(source.paths) if path not in cache.bad]
    usable = _subset(source, keep)
    if not usable.paths:
        raise UserError(f"--data {source.root}: none of the {len(source.paths)} images could "
                        "be decoded; check that they are real image files")
    _check_classes(usable)
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
    report = data_report(source, handle, cache.bad)
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
    skipped = {name: [] for name in handle.class_names}
    for path, why in sorted(bad.items()):
        skipped[source.class_names[source.labels[source.paths.index(path)]]].append(
            {"path": path, "reason": why})
    train = [counts[name]["train"] for name in handle.class_names]
    return {
        "imbalance_ratio": round(max(train) / max(1, min(train)), 2),
        "root": str(source.root),
        "presplit": source.presplit,
        "classes": list(handle.class_names),
        "images_found": len(source.paths),
        "images_used": len(handle.rows),
        "images_skipped": len(bad),
        "counts": counts,
        "skipped": {name: items for name, items in skipped.items() if items},
    }


def split_csv(handle: DataHandle, report: dict) -> str:
    """The split as CSV text, one row per image found (unreadable ones as 'skipped'), so it
    can be audited and reused with --split-file."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "class", "label", "split"])
    for row, label, split in zip(handle.rows, handle.labels, handle.splits):
        writer.writerow([handle.files[row], handle.class_names[label], label, split])
    for name, items in report["skipped"].items():
        for item in items:
            writer.writerow([item["path"], name, handle.class_names.index(name), SKIPPED])
    return out.getvalue()


# ---------------------------------------------------------------- demo data

def demo_root(cache_dir: Path | None = None) -> Path:
    """scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes), written once as
    an image folder of 32x32 PNGs, so the sweep runs offline on a fresh machine."""
    from sklearn.datasets import load_digits

    root = Path(cache_dir or default_cache_dir()) / "demo" / "digits"
    if (root / ".complete").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):
        if (root / ".complete").exists():
            return root
        digits = load_digits()
        tmp = Path(tempfile.mkdtemp(dir=root.parent))
        for i, (image, target) in enumerate(zip(digits.images, digits.target)):
            pixels = (image * (255.0 / 16.0)).round().astype(np.uint8)
            class_dir = tmp / str(target)
            class_dir.mkdir(exist_ok=True)
            Image.fromarray(pixels, mode="L").resize((32, 32), Image.Resampling.NEAREST) \
                .save(class_dir / f"digit_{i:04d}.png")
        (tmp / ".complete").write_text("sklearn.datasets.load_digits\n")
        shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp, root)
    return root
