"""An experiment's folder: a local (or NFS-mounted) path, or a URI that Ray Tune's storage
takes (``s3://bucket/prefix``, ``gs://...``; query options such as ``endpoint_override``
pass through to pyarrow). Ray Tune puts checkpoints and trial logs there from every node;
this class writes the driver's own files (split, data report, result tables) beside them.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from sweeps.experiment.files import CLAIM_LOCK
from trainables.core.errors import UserError
from trainables.core.faults import before_write
from trainables.core.files import replaced


def write_atomic(path: Path, text: str) -> None:
    """Write via a temp file beside ``path`` and rename: a reader never sees half a file, and
    a failed write leaves no temp file behind."""
    with replaced(path, before=before_write) as tmp:
        tmp.write_text(text, encoding="utf-8")


class Store:
    def __init__(self, storage: str, name: str):
        self.name = name
        self.is_uri = "://" in storage
        if self.is_uri:
            import pyarrow.fs

            try:
                self.fs, base = pyarrow.fs.FileSystem.from_uri(storage)
            except Exception as exc:  # unknown scheme, malformed URI, missing credentials
                raise UserError(
                    f"`storage={storage}`: {exc}; use a local path or a URI that "
                    "pyarrow understands (s3://bucket/prefix, gs://...)"
                ) from None
            self.root = f"{base.rstrip('/')}/{name}"
            self.storage_path = storage  # what Ray Tune is given
            scheme, netloc, path, query, _ = urlsplit(storage)
            self.location = urlunsplit((scheme, netloc, f"{path.rstrip('/')}/{name}", query, ""))
        else:
            base_dir = Path(storage).expanduser().resolve()
            self.storage_path = str(base_dir)
            self.root = str(base_dir / name)
            self.location = self.root

    @classmethod
    def from_location(cls, location: str) -> Store:
        """The store of an existing experiment, from its own path or URI (for --resume)."""
        if "://" in location:
            scheme, netloc, path, query, _ = urlsplit(location)
            parent, _, name = path.rstrip("/").rpartition("/")
            return cls(urlunsplit((scheme, netloc, parent, query, "")), name)
        path = Path(location).expanduser().resolve()
        return cls(str(path.parent), path.name)

    def __str__(self) -> str:
        return self.location

    def _path(self, relative: str) -> str:
        return f"{self.root}/{relative}" if relative else self.root

    def exists(self, relative: str = "") -> bool:
        if not self.is_uri:
            return Path(self._path(relative)).exists()
        import pyarrow.fs

        return self.fs.get_file_info(self._path(relative)).type != pyarrow.fs.FileType.NotFound

    def has_content(self) -> bool:
        """Anything in the folder but a claim's lock file (``sweeps/driver/claim.py``)."""
        if not self.is_uri:
            root = Path(self.root)
            return root.is_dir() and any(e.name != CLAIM_LOCK for e in root.iterdir())
        import pyarrow.fs

        selector = pyarrow.fs.FileSelector(self.root, allow_not_found=True)
        return bool(self.fs.get_file_info(selector))

    def read_text(self, relative: str) -> str:
        if not self.is_uri:
            return Path(self._path(relative)).read_text(encoding="utf-8")
        return self.read_bytes(relative).decode("utf-8")

    def read_bytes(self, relative: str) -> bytes:
        if not self.is_uri:
            return Path(self._path(relative)).read_bytes()
        with self.fs.open_input_stream(self._path(relative)) as handle:
            return handle.read()

    def top_files(self) -> list[str]:
        """The names of the files directly in the experiment folder."""
        if not self.is_uri:
            root = Path(self.root)
            return sorted(p.name for p in root.iterdir() if p.is_file()) if root.is_dir() else []
        import pyarrow.fs

        selector = pyarrow.fs.FileSelector(self.root, allow_not_found=True)
        return sorted(
            info.base_name
            for info in self.fs.get_file_info(selector)
            if info.type == pyarrow.fs.FileType.File
        )

    def write_text(self, relative: str, text: str) -> None:
        """Readers never see half a file: locally a temp file renamed into place, remotely a
        single upload (object stores replace objects whole)."""
        if not self.is_uri:
            path = Path(self._path(relative))
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, text)
            return
        before_write(self._path(relative))
        with self.fs.open_output_stream(self._path(relative)) as handle:
            handle.write(text.encode("utf-8"))

    def drop_checkpoints(self, trial_dir: str, keep: str | None) -> None:
        """Remove the trial's checkpoint folders but ``keep`` (its last whole one): what a
        failed copy left (Tune copies a checkpoint file by file; a full disk leaves it
        partial, a truncated ``state.pt`` or an empty ``predictions.npz``)."""
        if not self.is_uri:
            import shutil

            for path in Path(self._path(trial_dir)).glob("checkpoint_*"):
                if path.is_dir() and path.name != keep:
                    shutil.rmtree(path, ignore_errors=True)
            return
        import pyarrow.fs

        selector = pyarrow.fs.FileSelector(self._path(trial_dir), allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            if (
                info.type == pyarrow.fs.FileType.Directory
                and info.base_name.startswith("checkpoint_")
                and info.base_name != keep
            ):
                self.fs.delete_dir(info.path)

    def remove(self) -> None:
        if not self.is_uri:
            import shutil

            shutil.rmtree(self.root, ignore_errors=True)
        elif self.exists():
            self.fs.delete_dir(self.root)

    def check_writable(self, storage_arg: str) -> None:
        """A UserError now, rather than a sweep that fails at its first write."""
        if not self.is_uri:
            probe = Path(self.root).parent
            while not probe.exists():
                probe = probe.parent
            if not probe.is_dir() or not os.access(probe, os.W_OK):
                raise UserError(
                    f"`storage={storage_arg}`: not a writable directory; pass one you can write"
                )
            return
        try:
            self.write_text(".write_check", "ok")
            self.fs.delete_file(self._path(".write_check"))
        except Exception as exc:
            raise UserError(
                f"`storage={storage_arg}`: cannot write there "
                f"({str(exc).splitlines()[0][:160]}); check the URI and the "
                "credentials in your environment"
            ) from None
