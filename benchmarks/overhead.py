"""Benchmark 3 (issue: fast sweeps): what Ray Tune costs. N identical trials (seeds 0..N-1)
through ``sweeps/run.py`` one at a time vs the same N runs of ``fit()`` in a plain Python
loop, both as fresh processes on the same data, for short and for longer trials. Each
trial is given every CPU core (``--cpus-per-trial``), as the plain loop has them: Ray
limits a worker's threads to its CPUs, so with the default of 1 the comparison would
measure one core against all of them.

The sweep's extra time is Ray's start, scheduling, per-epoch checkpoints, TensorBoard and
the result table. Prints medians over rounds and the wall-time ratio.

    python benchmarks/overhead.py --model small_cnn --trials 4 --epochs 1,4       # CPU here
    python benchmarks/overhead.py --model resnet18 --data PHOTOS --epochs 1,5     # on a GPU
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ONE_AT_A_TIME, ROOT, machine, median, run_sweep


def settings(args, epochs: int) -> list[str]:
    keys = {
        "model": args.model,
        "pretrained": "false",
        "early_stop_patience": 0,
        "chance_epochs": 0,
        "max_epochs": epochs,
        "batch_size": args.batch_size,
    }
    return [item for key, value in keys.items() for item in ("--set", f"{key}={value}")]


def plain_loop(args) -> None:
    """``--plain``: the N trials as a bare loop over fit(), data prepared once."""
    import torch

    from sweeps.driver.spec import DEMO_OVERRIDES
    from trainables import data as D
    from trainables.core.config import TrialConfig, parse_overrides
    from trainables.trial.build import build_trial, preprocess_for

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    base = parse_overrides(settings(args, args.plain)[1::2])
    if not args.data:
        base = {**DEMO_OVERRIDES, **base}  # as the sweep does for the demo digits
    pre = preprocess_for(TrialConfig.from_dict(base))
    root = args.data or D.demo_root(D.default_cache_dir())
    handle, _ = D.prepare(
        D.discover(root),
        pre.load_size,
        D.default_cache_dir(),
        progress=False,
        interpolation=pre.interpolation,
    )
    for seed in range(args.trials):
        trial = build_trial(TrialConfig.from_dict({**base, "seed": seed}), handle)
        trial.fit(device, lambda metrics, state: None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", default="1,4")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", help="image folder (default: the demo digits)")
    parser.add_argument("--plain", type=int, help=argparse.SUPPRESS)  # the loop, as a child
    args = parser.parse_args()
    if args.plain:
        return plain_loop(args)
    print(machine(), flush=True)
    storage = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    data = ["--data", args.data] if args.data else []
    print(
        f"{'epochs':>6} {'plain loop s':>13} {'ray tune s':>11} {'ratio':>6} "
        f"{'extra s per trial':>18}"
    )
    for epochs in map(int, args.epochs.split(",")):
        plain, tune = [], []
        for round_ in range(args.rounds):
            started = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--plain",
                    str(epochs),
                    "--model",
                    args.model,
                    "--trials",
                    str(args.trials),
                    "--batch-size",
                    str(args.batch_size),
                    *data,
                ],
                cwd=ROOT,
                check=True,
            )
            plain.append(time.perf_counter() - started)
            seconds, table = run_sweep(
                [
                    "--space",
                    "single",
                    "--num-samples",
                    str(args.trials),
                    *ONE_AT_A_TIME,
                    *data,
                    *settings(args, epochs),
                ],
                storage,
                f"e{epochs}-r{round_}",
            )
            assert len(table) == args.trials and (table["epochs"] == epochs).all(), table
            tune.append(seconds)
        p, t = median(plain), median(tune)
        print(
            f"{epochs:>6} {p:>13.1f} {t:>11.1f} {t / p:>6.2f} {(t - p) / args.trials:>18.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
