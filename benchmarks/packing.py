"""Benchmark 5 (issue: fast sweeps): trials per GPU. The same sweep of N identical trials of a
small model with 1, 2 and 4 trials sharing each GPU (``--gpus-per-trial 1, 0.5, 0.25``);
throughput is training images per second of the whole sweep, wall clock.

    python benchmarks/packing.py --model resnet18 --data PHOTOS --trials 8 --epochs 3
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import machine, median, photo_folder, run_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--gpus", default="1,0.5,0.25")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "bench-photos")
    args = parser.parse_args()
    photo_folder(args.data, 10, args.per_class)
    print(machine(), flush=True)
    storage = Path(tempfile.mkdtemp(prefix="bench-packing-"))
    keys = {
        "model": args.model,
        "pretrained": "false",
        "early_stop_patience": 0,
        "chance_epochs": 0,
        "max_epochs": args.epochs,
        "batch_size": args.batch_size,
    }
    sets = [item for key, value in keys.items() for item in ("--set", f"{key}={value}")]
    train_images = None
    print(f"{'gpus/trial':>10} {'trials/GPU':>10} {'sweep s':>8} {'images/s':>9} {'vs 1':>6}")
    first = None
    for gpus in args.gpus.split(","):
        times = []
        for round_ in range(args.rounds):
            seconds, table = run_sweep(
                [
                    "--space",
                    "single",
                    "--data",
                    str(args.data),
                    "--num-samples",
                    str(args.trials),
                    "--gpus-per-trial",
                    gpus,
                    "--scheduler",
                    "fifo",
                    *sets,
                ],
                storage,
                f"g{gpus}-r{round_}",
            )
            assert (table["epochs"] == args.epochs).all(), table
            times.append(seconds)
        if train_images is None:
            train_images = round(10 * args.per_class * 0.8)
        seconds = median(times)
        rate = args.trials * args.epochs * train_images / seconds
        first = first or rate
        print(
            f"{gpus:>10} {1 / float(gpus):>10.0f} {seconds:>8.1f} {rate:>9.0f} "
            f"{rate / first:>5.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
