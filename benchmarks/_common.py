"""Helpers shared by the benchmarks: a synthetic photo folder, timing, and the machine."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def photo_folder(root: Path, classes: int, per_class: int, size=(500, 375), seed=0) -> Path:
    """An image folder of real JPEG files shaped like the field's data sets (a few thousand
    photos of a few hundred pixels): smooth colour gradients, blobs and sensor-like noise,
    written at quality 90, one process per class. Made once; reused if already there."""
    from concurrent.futures import ProcessPoolExecutor

    marker = root / f".complete-{classes}-{per_class}-{size[0]}x{size[1]}"
    if marker.exists():
        return root
    with ProcessPoolExecutor() as pool:
        list(pool.map(_class_photos, [(root, c, per_class, size, seed) for c in range(classes)]))
    marker.touch()
    return root


def _class_photos(job) -> None:
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    root, c, per_class, (w, h), seed = job
    rng = np.random.default_rng([seed, c])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    folder = root / f"class_{c:02d}"
    folder.mkdir(parents=True, exist_ok=True)
    base = rng.uniform(40, 215, 3)
    for i in range(per_class):
        angle = rng.uniform(0, np.pi)
        ramp = (np.cos(angle) * xx + np.sin(angle) * yy) / max(w, h)
        pixels = base + ramp[..., None] * rng.uniform(-80, 80, 3)
        pixels += rng.normal(0, 6, (h, w, 3))
        image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
            r = rng.uniform(10, 80)
            colour = tuple(int(v) for v in rng.uniform(0, 255, 3))
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=colour)
        image = image.filter(ImageFilter.GaussianBlur(1.5))
        image.save(folder / f"img_{i:04d}.jpg", quality=90)


# run.py's flags for a sweep of one trial at a time, each given every core (as a plain loop
# has them), with no pruning
ONE_AT_A_TIME = [
    "--max-concurrent",
    "1",
    "--cpus-per-trial",
    str(os.cpu_count()),
    "--scheduler",
    "fifo",
]


def add_frozen_network_args(parser) -> None:
    """The flags of the benchmarks on a frozen pretrained network: its data, model, weights
    and input size."""
    parser.add_argument("--data", default="demo:elpv4")
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--weights", default="IMAGENET1K_V1")
    parser.add_argument("--image-size", type=int, default=224)


def median(values) -> float:
    return statistics.median(values)


def machine() -> str:
    import torch

    cpu = f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})"
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, {cpu}, torch {torch.__version__}"
    return f"{cpu}, no GPU, torch {torch.__version__}"


class Timer:
    """Wall time of a block, waiting for the GPU at both ends."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        self._sync()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self._sync()
        self.seconds = time.perf_counter() - self.start

    def _sync(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()


def run_sweep(args: list[str], storage: Path, name: str):
    """Run ``sweeps/run.py`` as a user would (a fresh process and a fresh local Ray) and
    return (wall seconds, its results table)."""
    import subprocess

    import pandas as pd

    command = [
        sys.executable,
        str(ROOT / "sweeps" / "run.py"),
        *args,
        "--storage",
        str(storage),
        "--name",
        name,
    ]
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )  # also without pip install -e
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(
            f"sweep failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}"
        )
    return seconds, pd.read_csv(storage / name / "results.csv")
