"""Decode once: every usable image is decoded once per size into a uint8 array on disk,
keyed by the files' content; trials on a node memory-map that one file instead of decoding
again."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image, ImageOps

from trainables.core.files import (  # noqa: F401
    default_cache_dir,
    hash_file,
    replaced,
    writes_into,
)

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def ordered_map(work: Callable, items, workers: int | None = None, window: int = 256):
    """``map(work, items)`` on a thread pool, in order, with at most ``window`` items in
    flight: memory stays bounded however many items there are. Closed early (an error, a
    Ctrl-C in the consumer), it cancels what has not started and waits for what has."""
    items = iter(items)
    pool = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2)
    try:
        pending = deque(pool.submit(work, item) for item in islice(items, window))
        while pending:
            yield pending.popleft().result()
            for item in islice(items, 1):
                pending.append(pool.submit(work, item))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class Progress:
    """A line every tenth of the way (and at least every 1,000 items) on stderr."""

    def __init__(self, what: str, total: int, show: bool):
        self.what, self.total, self.show = what, total, show
        self.step = max(1000, total // 10)
        self.started = time.monotonic()

    def __call__(self, done: int) -> None:
        if self.show and (done % self.step == 0 or done == self.total) and done:
            rate = done / max(time.monotonic() - self.started, 1e-9)
            log.info(f"{self.what} {done}/{self.total} ({rate:.0f}/s)")


def file_hashes(root: Path, paths: tuple[str, ...], progress: bool = False) -> list[str]:
    """sha1 of every file's bytes (read in parallel, streamed); a file that cannot be read
    gets a marker instead (its decoding fails next, and says why)."""

    def one(path: str) -> str:
        try:
            return hash_file(root / path)
        except OSError as exc:
            return f"unreadable: {exc.strerror or type(exc).__name__}"

    tick = Progress("hashed", len(paths), progress and len(paths) >= 5000)
    hashes = []
    for done, value in enumerate(ordered_map(one, paths), 1):
        hashes.append(value)
        tick(done)
    return hashes


def content_digest(paths: tuple[str, ...], hashes: list[str]) -> str:
    """Key of a file list: relative paths and file bytes, so moving the root keeps the cache."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}".encode())
    for path, file_hash in zip(paths, hashes):
        digest.update(f"{path}\0{file_hash}\n".encode())
    return digest.hexdigest()[:24]


LONG_SIDE_AT_MOST = 16  # times the crop: longer images are cropped before they are resized
RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


class UnknownScale(ValueError):
    """An image whose pixel values have no known intensity scale."""


def _to_8_bits(image: Image.Image) -> np.ndarray:
    """16-bit, 32-bit and float grayscale to 8 bits on the scale of the file's format, never
    of the image's own values (a dark 16-bit photo stays dark, a bright one bright):
    16-bit by 65535 / 255; float in [0, 1] by 255. 32-bit integers and floats outside
    [0, 1] have no scale to go by: such a file is skipped, with the reason."""
    values = np.asarray(image)
    if image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG"):
        return np.round(values.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    if image.mode == "F":
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise UnknownScale(
                "floating-point pixels outside [0, 1]: their intensity scale "
                "is unknown; convert the image to 8 or 16 bits"
            )
        return np.round(values.astype(np.float64) * 255.0).astype(np.uint8)
    raise UnknownScale(
        f"{image.mode} pixels (32-bit integers): their intensity scale is "
        "unknown; convert the image to 8 or 16 bits"
    )


# the only formats Pillow is let open (the sweep, predict and the service alike): the
# documented image kinds. Pillow would otherwise also read GIF, ICO, TGA, PCX, EPS (through
# Ghostscript, which runs the file's PostScript) and more. (A camera's multi-picture JPEG,
# MPO, is opened by the JPEG plugin.)
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF")
Image.init()  # registers every plugin, so that each format named above can be asked for


def decode_image(path: Path, size: int, interpolation: str = "bilinear") -> np.ndarray:
    """Decode to RGB as the camera meant it (EXIF rotation), resize the shorter side to
    ``size`` and centre-crop a ``size`` x ``size`` square. Returns HWC uint8. A file of
    another format than IMAGE_FORMATS is not opened (UnidentifiedImageError)."""
    with Image.open(path, formats=IMAGE_FORMATS) as image:
        image.draft("RGB", (size, size))  # JPEG: decode big photos at a reduced scale, fast
        image = ImageOps.exif_transpose(image)
        if image.mode.startswith("I") or image.mode == "F":
            image = Image.fromarray(_to_8_bits(image))
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")  # transparent areas become white, not black
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
        image = image.convert("RGB")
        width, height = image.size
        scale = size / min(width, height)
        new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
        if new_w * new_h > LONG_SIDE_AT_MOST * size * size:
            # a strip (1 x 60000 px): resizing it whole first would take gigabytes;
            # resize only the centre square it is cropped to
            side = min(width, height)
            left, top = (width - side) / 2, (height - side) / 2
            image = image.resize(
                (size, size), RESAMPLE[interpolation], box=(left, top, left + side, top + side)
            )
            return np.asarray(image, dtype=np.uint8)
        image = image.resize((new_w, new_h), RESAMPLE[interpolation], reducing_gap=3.0)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        image = image.crop((left, top, left + size, top + size))
        return np.asarray(image, dtype=np.uint8)


@dataclass(frozen=True)
class DecodedCache:
    images: Path  # .npy, shape (len(paths), size, size, 3), uint8
    bad: dict[str, str] = field(default_factory=dict)  # relative path -> why it was skipped


def decode_cached(
    root: Path,
    paths: tuple[str, ...],
    digest: str,
    size: int,
    cache_dir: Path,
    progress: bool = False,
    interpolation: str = "bilinear",
) -> DecodedCache:
    """Decode every path at ``size`` once, into ``cache_dir``; later calls only read the index.

    Safe to call from many processes at once: a file lock makes one decode and the rest wait.
    Corrupt or unreadable files get a zero image and are listed in ``bad``. A cache folder
    that is full, read-only or unwritable is a UserError; a decode cut short (that, an
    error, Ctrl-C) leaves no partial file behind.
    """
    folder = Path(cache_dir) / "decoded"
    stem = folder / f"{digest}-{size}-{interpolation}"
    npy, meta = stem.with_suffix(".npy"), stem.with_suffix(".json")
    with writes_into(folder):
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(stem) + ".lock"):
            if not (npy.exists() and meta.exists()):
                _decode_all(root, paths, size, interpolation, npy, meta, progress)
            bad = json.loads(meta.read_text())["bad"]
    return DecodedCache(npy, bad)


def _decode_all(
    root: Path, paths, size: int, interpolation: str, npy: Path, meta: Path, progress: bool
) -> None:
    with replaced(npy, suffix=".npy") as tmp:
        bad = _decode_into(root, paths, size, interpolation, tmp, progress)
    try:
        with replaced(meta) as tmp:
            tmp.write_text(json.dumps({"bad": bad, "count": len(paths), "size": size}))
    except BaseException:
        npy.unlink(missing_ok=True)  # no images without their index
        raise


def claim_blocks(path: Path) -> None:
    """Allocate a file's whole length on disk, where the system can (ENOSPC if it cannot)."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as handle:
        length = os.fstat(handle.fileno()).st_size
        if not length:
            return
        try:
            os.posix_fallocate(handle.fileno(), 0, length)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise


def _decode_into(
    root: Path, paths, size: int, interpolation: str, tmp: Path, progress: bool
) -> dict[str, str]:
    """Decode every path into a new .npy file at ``tmp``; returns the skipped files' reasons."""
    array = np.lib.format.open_memmap(
        tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3)
    )
    # the file's blocks, claimed now: a memory-mapped write past a full disk's end is a
    # SIGBUS that kills the process without a word; a refused claim is an OSError
    claim_blocks(tmp)
    bad: dict[str, str] = {}

    def work(i: int, out: np.ndarray = array) -> None:
        try:
            out[i] = decode_image(root / paths[i], size, interpolation)
        except Exception as exc:  # any undecodable file is skipped, whatever the library raised
            bad[paths[i]] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]

    if progress:
        log.info(f"decoding {len(paths)} images at {size}px (once; cached for later sweeps)")
    tick = Progress("decoded", len(paths), progress)
    with contextlib.closing(ordered_map(work, range(len(paths)))) as results:
        for done, _ in enumerate(results, 1):
            tick(done)
    array.flush()
    del array
    return bad
