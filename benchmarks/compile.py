"""The CUDA switches in the real loop: whole ``fit()`` runs with ``compile`` and
``channels_last`` off and on, on the same data. Prints the first epoch (start-up and, with
compile, compilation) and the median of the later epochs; each run's scores show the
switches change speed, not results.

    python benchmarks/compile.py --model resnet50 --epochs 4     # on a GPU
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from _common import machine, median, photo_folder
from trainables import data as D
from trainables.core import metrics as M
from trainables.core.config import TrialConfig
from trainables.trial.build import build_trial, preprocess_for

VARIANTS = {
    "plain": {"channels_last": False, "compile": False},
    "channels_last": {"channels_last": True, "compile": False},
    "channels_last+compile": {"channels_last": True, "compile": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=150)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "bench-photos")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    root = photo_folder(args.data, args.classes, args.per_class)
    print(machine(), flush=True)
    base = {
        "model": args.model,
        "pretrained": "false",
        "batch_size": args.batch_size,
        "max_epochs": args.epochs,
        "early_stop_patience": 0,
        "chance_epochs": 0,
        "lr": 1e-3,
    }
    pre = preprocess_for(TrialConfig.from_dict(base))
    handle, _ = D.prepare(
        D.discover(root),
        pre.load_size,
        Path(tempfile.mkdtemp()),
        progress=False,
        interpolation=pre.interpolation,
    )
    print(
        f"{'variant':<22} {'epoch 1 s':>10} {'later epochs s (median)':>24} "
        f"{'val acc':>8} {'stop':>10}"
    )
    for name in args.variants.split(","):
        cfg = TrialConfig.from_dict({**base, **VARIANTS[name]})
        trial = build_trial(cfg, handle)  # seeded: every variant starts from the same weights
        reports, times = [], []
        last = [time.perf_counter()]

        def report(metrics, state):
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now
            reports.append(metrics)

        trial.fit(device, report)
        later = median(times[1:]) if len(times) > 1 else float("nan")
        print(
            f"{name:<22} {times[0]:>10.2f} {later:>24.2f} "
            f"{reports[-1][M.VAL_ACC]:>8.3f} {reports[-1][M.STOP_REASON]:>10}",
            flush=True,
        )


if __name__ == "__main__":
    main()
