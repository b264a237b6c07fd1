"""File helpers below every room: the cache folder, hashing a file, writes into a place
that may be full or read-only, and the one way a file or folder is replaced in place."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
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


@contextlib.contextmanager
def replaced(
    path: Path,
    folder: bool = False,
    suffix: str = "",
    before: Callable[[Path], None] | None = None,
) -> Iterator[Path]:
    """Replace ``path`` whole or not at all (write beside, then rename): yields a temporary
    path beside it, a file name to write (ending in ``suffix``) or, with ``folder``, an empty
    folder to fill. When the block ends the temporary takes ``path``'s place in one rename
    (a folder there is removed first); when it raises (a full disk, an error, Ctrl-C) the
    temporary is removed and ``path`` is as it was. ``before(path)`` is called first: the
    tests' full-disk fault hook (trainables/core/faults.py) for the driver's writes."""
    path = Path(path)
    if before is not None:
        before(path)
    if folder:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    else:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        if folder and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
