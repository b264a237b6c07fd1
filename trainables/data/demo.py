"""Data sets that ship inside packages, written once as image folders into the cache, so a
sweep runs offline on a fresh machine. ``--data demo:NAME`` picks one; without ``--data``
the sweep runs on the digits.

    digits  scikit-learn's handwritten digits: 1,797 real 8x8 scans, 10 classes, as 32x32 PNGs
    elpv    ELPV (pip install elpv-dataset): 300x300 electroluminescence photos of solar
            cells; "functional" (defect probability 0, 1,508 images) against "defective"
            (probability 1, 715); the 401 cells rated 1/3 or 2/3 are left out. Data licence
            CC BY-NC-SA 4.0 (non-commercial).
    elpv4   all 2,624 ELPV cells in the four classes their authors rated: defect
            probability 0 (1,508), 1/3 (295), 2/3 (106) and 1 (715).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image

from trainables.core.errors import UserError
from trainables.core.files import default_cache_dir, replaced, writes_into

PREFIX = "demo:"


def _written_once(name: str, cache_dir: Path | None, write: Callable[[Path], str]) -> Path:
    """The folder ``cache/demo/NAME``, made by ``write(tmp)`` once (under a lock, then
    renamed into place, so a half-written folder is never used)."""
    root = Path(cache_dir or default_cache_dir()) / "demo" / name
    if (root / ".complete").exists():
        return root
    with writes_into(root.parent):
        root.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root) + ".lock"):
            if (root / ".complete").exists():
                return root
            # a full disk, an error, Ctrl-C: nothing half-written stays
            with replaced(root, folder=True) as tmp:
                (tmp / ".complete").write_text(write(tmp) + "\n")
    return root


def _digits(folder: Path) -> str:
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, target) in enumerate(zip(digits.images, digits.target)):
        pixels = (image * (255.0 / 16.0)).round().astype(np.uint8)
        class_dir = folder / str(target)
        class_dir.mkdir(exist_ok=True)
        Image.fromarray(pixels, mode="L").resize((32, 32), Image.Resampling.NEAREST).save(
            class_dir / f"digit_{i:04d}.png"
        )
    return "sklearn.datasets.load_digits"


ELPV_CLASSES = {0.0: "functional", 1.0: "defective"}
# the four ratings the data's authors gave, named so that folders sort by defect probability
ELPV4_CLASSES = {
    0: "p0_functional",
    1: "p1_third_defective",
    2: "p2_thirds_defective",
    3: "p3_defective",
}


def _elpv4(folder: Path) -> str:
    return _elpv(folder, four=True)


def _elpv(folder: Path, four: bool = False) -> str:
    try:
        import elpv_dataset
    except ImportError:
        raise UserError(
            "`data=demo:elpv` needs the ELPV images: pip install elpv-dataset==1.0.0.post1"
        ) from None
    data = Path(elpv_dataset.__file__).parent / "data"
    for line in (data / "labels.csv").read_text().splitlines():
        path, probability, _ = line.split()
        if four:  # all 2,624 cells, by the rating in thirds
            name = ELPV4_CLASSES[int(round(float(probability) * 3))]
        else:
            name = ELPV_CLASSES.get(float(probability))
        if name is None:  # rated 1/3 or 2/3: left out of the two-class task
            continue
        target = folder / name / Path(path).name
        target.parent.mkdir(exist_ok=True)
        try:
            os.link(data / path, target)  # the package's own file, without a copy
        except OSError:
            shutil.copyfile(data / path, target)
    if four:
        return "elpv-dataset (CC BY-NC-SA 4.0): defect probability 0, 1/3, 2/3, 1"
    return "elpv-dataset (CC BY-NC-SA 4.0): functional (p=0) vs defective (p=1)"


DEMOS: dict[str, Callable[[Path], str]] = {"digits": _digits, "elpv": _elpv, "elpv4": _elpv4}


def demo_root(cache_dir: Path | None = None, name: str = "digits") -> Path:
    """The image folder of demo data set ``name``, written into the cache on first use."""
    if name not in DEMOS:
        raise UserError(
            f"`data={PREFIX}{name}`: no such demo data; use one of "
            f"{', '.join(PREFIX + n for n in DEMOS)}"
        )
    return _written_once(name, cache_dir, DEMOS[name])


def resolve_data(data: str | None, cache_dir: Path | None = None) -> str:
    """The folder that ``--data`` names: a path, ``demo:NAME``, or (None) the digits."""
    if data is None:
        return str(demo_root(cache_dir))
    if data.startswith(PREFIX):
        return str(demo_root(cache_dir, data[len(PREFIX) :]))
    return data
