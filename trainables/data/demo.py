"""Data that ships inside packages, written once as image folders into the cache, so the
sweeps run offline on a fresh machine."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image

from trainables.data.decode import default_cache_dir


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
