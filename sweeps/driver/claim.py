"""An experiment folder belongs to one sweep at a time, and only folders this tool wrote are
ever removed.

A sweep claims its folder before it writes anything: it takes an exclusive lock on
``.visionsweep.lock`` inside it (released by the operating system however the driver ends,
so a dead sweep never blocks ``--resume``) and writes the marker ``.visionsweep``, which says
the folder is an experiment of this tool. ``--overwrite`` removes only a folder that has the
marker, never one that holds or lies inside the ``--data`` folder, and never one a live sweep
holds. On a cloud store there is no lock: the claim is the marker alone.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

from sweeps.experiment.files import CLAIM_LOCK, MARKER, SWEEP_JSON
from sweeps.experiment.redact import redact_all
from sweeps.experiment.storage import Store
from trainables.core.errors import UserError

_HELD: list = []  # open lock files of this process: the lock lasts as long as the driver


def within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both resolved)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def check_data_apart(store: Store, data_root: str | None) -> None:
    """Refuse an experiment folder that is, holds or lies inside the data folder."""
    if store.is_uri or not data_root:
        return
    experiment, data = Path(store.root).resolve(), Path(data_root).resolve()
    if within(experiment, data) or within(data, experiment):
        raise UserError(
            f"experiment {store} and `data={data}` overlap (one holds the "
            "other); put the experiment outside the data folder with `storage`"
        )


def _holder(root: Path) -> str:
    try:
        info = json.loads((root / MARKER).read_text())
        return f" (pid {info['pid']} on {info['host']}, started {info['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _take(handle, root: Path, what: str) -> None:
    """Take ``root``'s lock on the open lock file ``handle``, or end in one line naming the
    sweep that holds it (``what``: what to do about it)."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(
            f"experiment {root} is in use by a running sweep{_holder(root)}; {what}"
        ) from None


def _lock(root: Path, what: str) -> None:
    handle = open(root / CLAIM_LOCK, "a+")
    _take(handle, root, what)
    _HELD.append(handle)


def check_idle(root: Path, what: str) -> None:
    """UserError when a running sweep holds ``root`` (its lock is taken), so that nothing
    reads a table that is still being written as if it were final."""
    root = Path(root)
    if not (root / CLAIM_LOCK).exists():
        return
    with open(root / CLAIM_LOCK, "a+") as handle:
        _take(handle, root, what)
        fcntl.flock(handle, fcntl.LOCK_UN)


def _mark(store: Store, command: list[str]) -> None:
    store.write_text(
        MARKER,
        json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": redact_all(command),
            },
            indent=1,
        ),
    )


def _content(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [entry for entry in root.iterdir() if entry.name != CLAIM_LOCK]


def check_new(store: Store, overwrite: bool) -> None:
    """What ``claim_new`` will refuse, checked before any work and without writing."""
    if not store.is_uri and Path(store.root).is_file():
        raise UserError(f"experiment path {store} is a file; choose another `name`")
    if store.has_content():
        if not overwrite:
            raise UserError(
                f"experiment {store} already exists; choose another `name` "
                "or pass `overwrite` to replace it"
            )
        if not store.exists(MARKER) and not store.exists(SWEEP_JSON):
            raise UserError(
                f"`overwrite`: {store} is not an experiment of this tool (no "
                f"{MARKER} in it); it is left as it is: choose another `name`"
            )


def claim_new(store: Store, overwrite: bool, command: list[str]) -> None:
    """Claim the folder of a new sweep (emptying it first with ``overwrite``); refuse one
    that holds anything else, or that another sweep holds."""
    check_new(store, overwrite)
    if store.is_uri:
        if overwrite:
            store.remove()
        _mark(store, command)
        return
    root = Path(store.root)
    root.mkdir(parents=True, exist_ok=True)
    _lock(root, "wait for it to end or choose another `name`")
    if _content(root) and not overwrite:  # another sweep filled it since the check above
        raise UserError(
            f"experiment {store} already exists; choose another `name` or pass "
            "`overwrite` to replace it"
        )
    for entry in _content(root):
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    _mark(store, command)


def claim_resumed(store: Store) -> None:
    """Claim the folder of an interrupted sweep; refuse one that a running sweep holds."""
    if not store.is_uri:
        _lock(Path(store.root), "wait for it to end; a running sweep cannot be resumed")
