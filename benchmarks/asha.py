"""Benchmark 4 (issue: fast sweeps): what ASHA saves. The same grid (default ``lr_grid``: six
learning rates x two optimizers, same seeds) once with the space's ASHA settings and once with
every trial run to its end (``--scheduler fifo``): epochs spent, wall time, and the best
validation accuracy each finds. One local Ray cluster per sweep, as a user runs it;
``--rounds`` repeats both, side by side.

    python benchmarks/asha.py --rounds 2                      # CPU here, demo digits
    python benchmarks/asha.py --space googlenet_strategies --rounds 1
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import machine, median, run_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="lr_grid", help="a grid space (default lr_grid)")
    parser.add_argument("--model", help="--set model=NAME (lr_grid: default small_cnn)")
    parser.add_argument(
        "--epochs", type=int, help="--max-epochs (default: the space's own; lr_grid: 20)"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data", help="image folder (default: the demo digits)")
    args = parser.parse_args()
    print(machine(), flush=True)
    storage = Path(tempfile.mkdtemp(prefix="bench-asha-"))
    common = [
        "--space",
        args.space,
        *(["--set", f"model={args.model}"] if args.model else []),
        *(["--max-epochs", str(args.epochs)] if args.epochs else []),
        *(["--data", args.data] if args.data else []),
    ]
    rows = {"asha": [], "fifo": []}
    for round_ in range(args.rounds):
        for scheduler in rows:
            seconds, table = run_sweep(
                [*common, "--scheduler", scheduler], storage, f"{scheduler}-r{round_}"
            )
            best = table.loc[table["best_val_loss"].idxmin()]
            rows[scheduler].append(
                {
                    "seconds": seconds,
                    "epochs": int(table["epochs"].sum()),
                    "best_val_acc": float(table["best_val_acc"].max()),
                    "picked": str(best["variant"]),
                    "picked_test_acc": float(best["test_acc"]),
                }
            )
            print(f"round {round_} {scheduler}: {rows[scheduler][-1]}", flush=True)
    print(
        f"\n{'scheduler':<9} {'epochs':>7} {'wall s':>8} {'best val acc':>13} "
        f"{'test acc of pick':>17}  picks"
    )
    for scheduler, runs in rows.items():
        print(
            f"{scheduler:<9} {median([r['epochs'] for r in runs]):>7.0f} "
            f"{median([r['seconds'] for r in runs]):>8.1f} "
            f"{median([r['best_val_acc'] for r in runs]):>13.4f} "
            f"{median([r['picked_test_acc'] for r in runs]):>17.4f}  "
            f"{', '.join(r['picked'] for r in runs)}"
        )
    saving = median([a["seconds"] / f["seconds"] for a, f in zip(rows["asha"], rows["fifo"])])
    epochs = median([a["epochs"] / f["epochs"] for a, f in zip(rows["asha"], rows["fifo"])])
    print(
        f"ASHA / run-everything: {epochs:.2f} of the epochs, {saving:.2f} of the wall time "
        "(median of per-round ratios)"
    )


if __name__ == "__main__":
    main()
