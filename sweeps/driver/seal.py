"""The seal on Ray Tune's own state files: --resume unpickles them, so it only opens those
this tool wrote under the user's key.

Tune keeps an experiment's state in files it unpickles on ``Tuner.restore``: ``tuner.pkl``
(which legitimately holds functions pickled by value), the trials inside
``experiment_state-*.json`` (cloudpickled), ``searcher-state-*.pkl``,
``callback-states-*.pkl`` and ``basic-variant-state-*.json``. An experiment folder is what
one user hands another, so a crafted file there would run its code on ``--resume``. No
allow-list of classes can make those pickles safe; instead every version of them the sweep
writes is sealed here: an HMAC-SHA256 under a key of this user's (``state.key`` in
``$XDG_CONFIG_HOME/visionsweep`` or ``~/.config/visionsweep``, made on first use, readable by
the user alone; ``$VISIONSWEEP_STATE_KEY`` instead, for a cluster's shared driver account),
recorded in the experiment's ``.visionsweep-seal.json``. ``--resume`` checks each file
against its seal before Tune opens it and refuses, in one line, a folder with any file that
is not sealed or has changed; ``--trust-state`` resumes one whose writer the user trusts.

Tune writes the controller's files to its local staging folder, then copies that folder to
the experiment in the background; the recorder seals the staging copies after each of
Tune's steps (Tune saves them in the step, then calls the callbacks) and puts the record
beside them, so that Tune's copy carries both; the last ``KEEP`` versions of each file stay
sealed, so a copy that was still on its way when the driver died is the previous, also
sealed, version. ``tuner.pkl`` (written by the Tuner straight into the experiment) is sealed
there when the Tuner is made, and everything once more when the sweep ends.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from trainables.core.errors import UserError

SEAL = ".visionsweep-seal.json"
KEY_ENV = "VISIONSWEEP_STATE_KEY"
KEY_FILE = "state.key"
KEEP = 4  # sealed versions kept per file
# what Tune unpickles on restore (at the experiment's top level)
PATTERNS = (
    "tuner.pkl",
    "experiment_state-*.json",
    "searcher-state-*.pkl",
    "callback-states-*.pkl",
    "basic-variant-state-*.json",
)


def is_state(name: str) -> bool:
    from fnmatch import fnmatch

    return any(fnmatch(name, pattern) for pattern in PATTERNS)


def key_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "visionsweep" / KEY_FILE


def key() -> bytes:
    """This user's sealing key: $VISIONSWEEP_STATE_KEY, else the key file (made the first
    time, mode 0600)."""
    given = os.environ.get(KEY_ENV)
    if given:
        return given.encode()
    path = key_path()
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    made = secrets.token_hex(32).encode()
    try:  # created exclusively: two sweeps starting at once agree on one key
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(made)
    return made


def digest(name: str, data: bytes, secret: bytes) -> str:
    return hmac.new(secret, name.encode() + b"\0" + data, hashlib.sha256).hexdigest()


class Sealer:
    """Seals the state files of one experiment (``store``) as the sweep writes them."""

    def __init__(self, store):
        self.store = store
        self.secret = key()
        self.record = read_record(store)
        self._seen: dict[str, tuple[int, int]] = {}  # file -> (mtime_ns, size) last sealed

    def seal_folder(self, folder: str | Path) -> None:
        """Seal the state files in Tune's local staging ``folder`` that changed since they
        were last sealed, and put the record there too: Tune's next copy to the experiment
        takes it along with them (and writes it where the sweep's own writes go not)."""
        folder = Path(folder)
        if not folder.is_dir():
            return
        changed = False
        for path in sorted(folder.iterdir()):
            if not (path.is_file() and is_state(path.name)):
                continue
            stat = path.stat()
            if self._seen.get(path.name) == (stat.st_mtime_ns, stat.st_size):
                continue
            changed |= self._add(path.name, path.read_bytes())
            self._seen[path.name] = (stat.st_mtime_ns, stat.st_size)
        if changed:
            staged = folder / SEAL
            beside = staged.with_name(staged.name + ".tmp")
            beside.write_text(self._text(), encoding="utf-8")
            os.replace(beside, staged)

    def seal_store(self) -> None:
        """Seal the state files as they are in the experiment itself (tuner.pkl, which the
        Tuner writes there directly; every file once the sweep has ended) and write the
        record there."""
        changed = False
        for name in self.store.top_files():
            if is_state(name):
                changed |= self._add(name, self.store.read_bytes(name))
        if changed or not self.store.exists(SEAL):
            self.store.write_text(SEAL, self._text())

    def _add(self, name: str, data: bytes) -> bool:
        sealed = self.record.setdefault(name, [])
        value = digest(name, data, self.secret)
        if value in sealed:
            return False
        sealed.append(value)
        del sealed[:-KEEP]
        return True

    def _text(self) -> str:
        return json.dumps({"files": self.record}, indent=1)


def read_record(store) -> dict[str, list[str]]:
    if not store.exists(SEAL):
        return {}
    try:
        files = json.loads(store.read_text(SEAL))["files"]
        return {str(k): [str(v) for v in values] for k, values in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}


def check_sealed(store, trust: bool = False) -> None:
    """Before Tune opens an experiment's state: every state file must be one this user's
    sweeps sealed. ``trust`` (--trust-state) skips the check."""
    if trust:
        return
    record, secret = read_record(store), key()
    for name in store.top_files():
        if not is_state(name):
            continue
        if digest(name, store.read_bytes(name), secret) in record.get(name, ()):
            continue
        raise UserError(
            f"--resume {store}: its Ray Tune state file {name} is not as this tool sealed "
            f"it under your key ({key_path()} or ${KEY_ENV}): another user wrote it, or it "
            "changed since; Tune would unpickle it and run any code in it: resume with "
            "--trust-state only if you trust whoever wrote the folder"
        )
