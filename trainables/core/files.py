"""File helpers below every room: the cache folder, hashing a file, and writes into a
place that may be full or read-only."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from pathlib import Path

from trainables.core.errors import UserError


def default_cache_dir() -> Path:
    """Where decoded images and the demo data live: $VISIONSWEEP_CACHE or ~/.cache/visionsweep."""
    env = os.environ.get("VISIONSWEEP_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "visionsweep"


# a write into the cache that failed for a reason of the place, not of the data
_PLACE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.ENOENT,
}


@contextlib.contextmanager
def writes_into(place: Path, what: str = "cache", setting: str = "VISIONSWEEP_CACHE"):
    """Writes into the folder ``place`` (the cache; Ray's temporary folder): a full,
    read-only or unwritable place ends in one line that names it and the fix, not a
    traceback."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _PLACE_ERRNOS:
            raise
        fix = (
            "free some space there"
            if exc.errno in (errno.ENOSPC, errno.EDQUOT)
            else "make it writable"
        )
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(place) else ""
        raise UserError(
            f"{what} {place}: {exc.strerror or exc}{where}; {fix}, or set "
            f"{setting} to a writable folder with room"
        ) from None


def hash_file(path: Path, algorithm: str = "sha1") -> str:
    """The hex digest of a file's bytes, read a megabyte at a time."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
