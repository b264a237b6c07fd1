"""Resolution, measured not guessed: how the ranking of a fixed set of recipes at a small
image size agrees with their ranking at the largest (Spearman's rank correlation, from
scipy.stats), from cross-validated experiments of the same recipes at each size.

Each argument is SIZE=EXPERIMENT: a sweep run with ``--folds K`` over the same variants at
that ``image_size`` (its ``results_oof.csv``, every image tested once). Prints each size's
out-of-fold accuracy per variant, and each smaller size's Spearman rho (and its p-value)
against the largest, over the variants both ran.

    python benchmarks/resolution.py 64=runs/lp64 128=runs/lp128 224=runs/lp224 --drop-suffix=-ce
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from scipy.stats import spearmanr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="SIZE=EXPERIMENT")
    parser.add_argument("--metric", default="oof_acc", help="results_oof.csv column to rank by")
    parser.add_argument(
        "--drop-suffix",
        action="append",
        default=[],
        help="a variant-name suffix to drop, so that runs whose grids named a setting and "
        "runs that fixed it match (e.g. -ce)",
    )
    args = parser.parse_args(argv)
    scores = {}
    for item in args.runs:
        size, _, folder = item.partition("=")
        table = Path(folder) / "results_oof.csv"
        if not size.isdigit() or not table.is_file():
            print(
                f"{item}: write SIZE=EXPERIMENT, a folder holding results_oof.csv", file=sys.stderr
            )
            return 2
        frame = pd.read_csv(table)
        for suffix in args.drop_suffix:
            frame["variant"] = frame["variant"].str.removesuffix(suffix)
        frame = frame.set_index("variant")
        scores[int(size)] = frame[args.metric]
    sizes = sorted(scores)
    table = pd.DataFrame(scores)[sizes]
    print(table.round(4).to_markdown())
    largest = sizes[-1]
    print()
    print(f"| size | variants | Spearman rho with {largest} px | p |")
    print("| ---: | ---: | ---: | ---: |")
    for size in sizes[:-1]:
        both = table[[size, largest]].dropna()
        rho, p = spearmanr(both[size], both[largest])
        print(f"| {size} | {len(both)} | {rho:.2f} | {p:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
