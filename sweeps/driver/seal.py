"""The seal on Ray Tune's own state files: ``--resume`` has Tune unpickle them, so it opens
only those a sweep of this user's wrote.

Tune keeps an experiment's state in files it unpickles on ``Tuner.restore``: ``tuner.pkl``
(which holds functions pickled by value), and, pickled though most are named ``.json``,
``experiment_state-*.json``, ``basic-variant-state-*.json``, ``search_gen_state-*.json``,
``searcher-state-*.pkl`` and ``callback-states-*.pkl``. An experiment folder is what one
user hands another, so a crafted file there would run its code on ``--resume``; no allow-list
of classes makes those pickles safe. So every version of them a sweep writes is sealed: an
HMAC-SHA256 under a key of this user's (``state.key`` in ``$XDG_CONFIG_HOME/visionsweep`` or
``~/.config/visionsweep``, made on first use, readable by the user alone; or
``$VISIONSWEEP_STATE_KEY``, for a cluster's shared driver account), recorded in the
experiment's ``.visionsweep-seal``. ``--resume`` checks each state file against it before
Tune opens any and refuses, in one line, a folder with a file that is not sealed or has
changed; ``--trust-state`` (``trust_state=True``) resumes one whose writer the user trusts.

When the seal is taken: Tune's controller writes its files into a local staging folder and
then copies that folder into the experiment in the background. The seal is taken inside
that save (``ray_internals.after_tune_saves``), before the copy starts, and written straight
into the experiment, so every version that can reach the experiment is sealed before it
gets there, whenever the driver dies. ``tuner.pkl``, which the Tuner writes straight into a
new experiment, is sealed when the Tuner is made. The seal keeps the last ``KEEP`` versions
of each file, so a copy still on its way when the driver died leaves an older, also sealed,
version. Its name ends neither in ``.json`` nor ``.pkl``, so Tune's own copy of a resumed
experiment's files into its staging folder (and back) never carries an old seal over a new.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from fnmatch import fnmatch
from pathlib import Path

from trainables.core.errors import UserError
from trainables.core.files import replaced

SEAL = ".visionsweep-seal"
KEY_ENV = "VISIONSWEEP_STATE_KEY"
KEY_FILE = "state.key"
KEEP = 16  # sealed versions kept per file
TUNER_PKL = "tuner.pkl"  # what the Tuner writes into a new experiment
# what Tune unpickles on restore, at the experiment's top level
PATTERNS = (
    "*.pkl",
    "experiment_state-*.json",
    "basic-variant-state-*.json",
    "search_gen_state-*.json",
)


def is_state(name: str) -> bool:
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
    try:  # created exclusively: two sweeps starting at once agree on one key
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    made = secrets.token_hex(32).encode()
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(made)
    return made


def digest(name: str, data: bytes, secret: bytes) -> str:
    return hmac.new(secret, name.encode() + b"\0" + data, hashlib.sha256).hexdigest()


def read_record(store) -> dict[str, list[str]]:
    """File name -> the digests of its sealed versions; empty where there is no seal or it
    cannot be read (every state file then counts as unsealed)."""
    if not store.exists(SEAL):
        return {}
    try:
        files = json.loads(store.read_text(SEAL))["files"]
        return {str(k): [str(v) for v in values] for k, values in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


class Sealer:
    """Seals the Tune state files of one experiment (``store``) as the sweep writes them.
    Never raises into Tune: a seal that could not be written (a full disk) is kept in
    ``failed``, and the driver's resume line then says the resume needs ``--trust-state``."""

    def __init__(self, store):
        self.store = store
        self.secret = key()
        self.record = read_record(store)
        self.failed: str | None = None

    def seal_staged(self, folder: str) -> None:
        """After Tune saved its state into its staging ``folder``, before its copy into the
        experiment: seal what changed, and write the seal into the experiment."""
        self._seal(
            lambda: (
                (path.name, path.read_bytes())
                for path in sorted(Path(folder).iterdir())
                if is_state(path.name) and path.is_file()
            )
        )

    def seal_stored(self, *names: str) -> None:
        """Seal files as they are in the experiment itself (``tuner.pkl``, which the Tuner
        writes there)."""
        self._seal(lambda: ((name, self.store.read_bytes(name)) for name in names))

    def _seal(self, files) -> None:
        """Seal each (name, contents) of ``files()`` not sealed yet, then write the seal."""
        try:
            changed = False
            for name, data in files():
                changed |= self._add(name, data)
            if changed:
                self._write()
        except OSError as exc:
            self.failed = exc.strerror or str(exc)

    def _add(self, name: str, data: bytes) -> bool:
        sealed = self.record.setdefault(name, [])
        value = digest(name, data, self.secret)
        if value in sealed:
            return False
        sealed.append(value)
        del sealed[:-KEEP]
        return True

    def _write(self) -> None:
        # straight to the experiment, not through the store's write_text: the seal is
        # written inside Tune's saves, whose timing no test's count of the driver's writes
        # (the full-disk fault) can follow
        text = json.dumps({"files": self.record}, indent=1).encode()
        if self.store.is_uri:
            with self.store.fs.open_output_stream(f"{self.store.root}/{SEAL}") as handle:
                handle.write(text)
        else:
            with replaced(Path(self.store.root) / SEAL) as tmp:
                tmp.write_bytes(text)
        self.failed = None  # the whole record is written: the earlier versions, too


def check_sealed(store, trust: bool = False) -> None:
    """Before Tune opens an experiment's state: every state file in it must be one this
    user's sweeps sealed. ``trust`` (--trust-state) skips the check."""
    if trust:
        return
    record, secret = read_record(store), key()
    for name in store.top_files():
        if not is_state(name):
            continue
        if digest(name, store.read_bytes(name), secret) in record.get(name, ()):
            continue
        raise UserError(
            f"`resume={store}`: its Ray Tune state file {name} is not sealed under your key "
            f"({key_path()} or ${KEY_ENV}): another user wrote it, it changed since, or a "
            "version of this tool from before the seal did; Tune would unpickle it and run "
            "any code in it. Resume with `trust_state=True` only if you trust whoever wrote "
            "the folder"
        )
