"""What the input-size check found, kept in the cache folder: whether a model's forward pass
works at a size is a function of the architecture code alone (this room's files and the
torch, torchvision and timm releases), and finding it out on the meta device costs every
sweep's driver about a second (torch's shape machinery and its compiler's modules, which the
driver needs for nothing else; benchmarks/README.md, section 3). Any change of that code or
of those releases starts a new record; a record that cannot be read or written is ignored,
and the check is done again."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

from trainables.core.files import default_cache_dir, replaced

FILE = "input-sizes.json"
LIBRARIES = ("torch", "torchvision", "timm")


def code_key() -> str:
    """The digest of what a verdict depends on: the releases of the libraries that build the
    models and the bytes of this room's source files."""
    digest = hashlib.sha1()
    for name in LIBRARIES:
        try:
            digest.update(f"{name}={metadata.version(name)};".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{name}=none;".encode())
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()


class Verdicts:
    """``works[(model, aux_heads, size)]``: True, False, or None where the meta device could
    not tell; loaded from and saved into ``folder`` (default: the cache folder)."""

    def __init__(self, folder: Path | None = None):
        self.path = Path(folder or default_cache_dir()) / FILE
        self.key = code_key()
        self.works: dict[str, bool | None] = {}
        self.changed = False
        try:
            saved = json.loads(self.path.read_text())
            if saved.get("key") == self.key and isinstance(saved.get("works"), dict):
                self.works = {  # a verdict is True, False or None; anything else, found again
                    name: works
                    for name, works in saved["works"].items()
                    if works is True or works is False or works is None
                }
        except (OSError, ValueError, AttributeError):
            pass  # none yet, unreadable or not ours: found again

    @staticmethod
    def _name(model: str, aux_heads: bool, size: int) -> str:
        return f"{model}|{int(aux_heads)}|{size}"

    def known(self, model: str, aux_heads: bool, size: int) -> bool:
        return self._name(model, aux_heads, size) in self.works

    def get(self, model: str, aux_heads: bool, size: int) -> bool | None:
        return self.works[self._name(model, aux_heads, size)]

    def put(self, model: str, aux_heads: bool, size: int, works: bool | None) -> None:
        self.works[self._name(model, aux_heads, size)] = works
        self.changed = True

    def save(self) -> None:
        """Written whole or not at all; a folder that is full or read-only is left alone
        (the next sweep checks again)."""
        if not self.changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with replaced(self.path) as tmp:
                tmp.write_text(json.dumps({"key": self.key, "works": self.works}, indent=0))
            self.changed = False
        except OSError:
            pass
