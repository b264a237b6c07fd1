"""Confirm a finished sweep's best variants under cross-validation, and say which is best.

    python sweeps/confirm.py runs/NAME [--top 3] [--folds 5] [--seeds 1] [--name NAME]
                             [--storage DIR] [--cpus-per-trial F] [--max-concurrent N]
                             [--address ADDR]

Takes the TOP variants of the experiment, ranked by their mean validation loss (chosen on
validation, never on test), and re-runs each, with the exact configuration its best trial
recorded (compute threads included), once per fold and seed, all on the same folds. Each
variant's score comes from its out-of-fold predictions: one per image, over all images.
Every pair of variants is compared with McNemar's test on the same images, the p-values
Holm-corrected over the pairs, and the command ends with one line: which variant is best
and whether its lead over the runner-up is distinguishable.

Writes STORAGE/NAME/ (default: the source's storage, NAME-confirm): one experiment per
variant, and results_oof.csv, pairs.csv, verdict.md, ranking.png, confirm.json beside them.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from sweeps import cli
from sweeps.experiment.files import CONFIRM_JSON, SPLIT_CSV
from sweeps.experiment.folder import Experiment, load_experiment, read_sweep_json
from sweeps.experiment.storage import Store, write_atomic
from trainables.core import metrics as M
from trainables.core.config import FIELD_TYPES, TrialConfig
from trainables.core.errors import UserError
from trainables.trial import checkpoint

NOT_CARRIED = ("seed", "fold")  # set anew by the confirmation: its seeds, its folds


def top_variants(experiment: Experiment, top: int) -> list[tuple[str, str]]:
    """(variant, its best trial) for the ``top`` variants by mean validation loss."""
    results = experiment.results()
    if results.empty:
        raise UserError(f"{experiment.root}: no trial gave a result; nothing to confirm")
    means = results.groupby("variant")[M.BEST_VAL_LOSS].mean().sort_values(kind="stable")
    chosen = []
    for variant in means.index[:top]:
        rows = results[results["variant"] == variant]
        chosen.append((str(variant), str(rows.loc[rows[M.BEST_VAL_LOSS].idxmin(), "trial_id"])))
    return chosen


def recorded_config(experiment: Experiment, trial_id: str) -> dict:
    """The configuration the trial recorded (trial.json), as --set values: every field that
    differs from the default, but the seed and the fold."""
    latest = experiment.latest_checkpoint(trial_id)
    if latest is None:
        raise UserError(f"trial {trial_id}: no checkpoint with its record; it cannot be re-run")
    config = checkpoint.read_record(latest).config
    defaults = TrialConfig().to_dict()
    return {
        k: v
        for k, v in config.items()
        if k in FIELD_TYPES and k not in NOT_CARRIED and v != defaults.get(k)
    }


def _folder_name(variant: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", variant) or "variant"


def confirm(
    source: str,
    top: int,
    folds: int,
    seeds: int,
    storage: str | None,
    name: str | None,
    cpus_per_trial: float | None = None,
    max_concurrent: int | None = None,
    address: str | None = None,
):
    from sweeps.analysis.folds import out_of_fold, settle, show
    from sweeps.api import run_study

    experiment = load_experiment(source)
    args = read_sweep_json(Store.from_location(str(experiment.root)), source).get("args", {})
    chosen = top_variants(experiment, top)
    root = Path(storage) if storage else experiment.root.parent
    name = name or f"{experiment.root.name}-confirm"
    folder = root / name
    if folder.exists():
        raise UserError(f"{folder}: exists already; pass another --name")
    configs = {variant: recorded_config(experiment, trial) for variant, trial in chosen}
    print(
        f"confirming {len(chosen)} variant(s) of {experiment.root} (lowest mean validation "
        f"loss): {', '.join(v for v, _ in chosen)}; {folds} folds x {seeds} seed(s) each "
        f"-> {folder}",
        file=sys.stderr,
        flush=True,
    )
    folder.mkdir(parents=True)
    write_atomic(
        folder / CONFIRM_JSON,
        json.dumps(
            {
                "source": str(experiment.root.resolve()),
                "top": top,
                "folds": folds,
                "seeds": seeds,
                "chosen_by": "mean best validation loss over the source's trials",
                "variants": {v: {"from_trial": t, "config": configs[v]} for v, t in chosen},
            },
            indent=1,
        ),
    )
    pooled, left_out, split_file = [], [], None
    for variant, _ in chosen:
        study = run_study(
            "single",
            data=args.get("data"),
            overrides=configs[variant],
            smoke=bool(args.get("smoke")),
            storage=folder,
            name=_folder_name(variant),
            folds=folds,
            num_samples=seeds,
            max_per_class=args.get("max_per_class"),
            split_file=split_file,
            split_seed=None if split_file else args.get("split_seed"),
            cpus_per_trial=cpus_per_trial,
            max_concurrent=max_concurrent,
            address=address,
        )
        split_file = split_file or str(study.root / SPLIT_CSV)  # every variant on these folds
        runs, refused = out_of_fold(load_experiment(study.root))
        pooled += [replace(run, variant=variant) for run in runs]
        left_out += [f"{variant}: {reason}" for reason in refused]
    if pooled and any(not np.array_equal(p.ids, pooled[0].ids) for p in pooled):
        raise UserError(
            f"{folder}: the variants were tested on different images; not comparing them"
        )
    settled = settle(pooled, experiment.class_names, folder, left_out)
    print()
    print(show(settled))
    for reason in left_out:
        print(f"left out: {reason}", file=sys.stderr)
    print(f"verdict, table and plot: {folder}")
    return settled


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__, "python sweeps/confirm.py")
    parser.add_argument("experiment", metavar="EXPERIMENT_DIR")
    parser.add_argument(
        "--top",
        type=cli.number(int, low=2),
        default=3,
        help="how many of the best variants to confirm (default 3)",
    )
    parser.add_argument(
        "--folds",
        type=cli.number(int, low=3, high=100),
        default=5,
        help="cross-validation folds (default 5)",
    )
    parser.add_argument(
        "--seeds",
        type=cli.number(int, low=1),
        default=1,
        help="seeds per variant and fold (default 1)",
    )
    parser.add_argument(
        "--storage", help="where the confirmation goes (default: beside the experiment)"
    )
    parser.add_argument("--name", help="its folder name (default: EXPERIMENT-confirm)")
    parser.add_argument("--cpus-per-trial", type=cli.number(float, above=0))
    parser.add_argument("--max-concurrent", type=cli.number(int, low=1))
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="join this Ray cluster (default: $RAY_ADDRESS; else a local one)",
    )
    args = parser.parse_args(argv)
    settled = confirm(
        args.experiment,
        args.top,
        args.folds,
        args.seeds,
        args.storage,
        args.name,
        args.cpus_per_trial,
        args.max_concurrent,
        args.address,
    )
    return 0 if not settled.ranked.empty else 1


def cli_main() -> None:
    cli.run(main)


if __name__ == "__main__":
    cli_main()
