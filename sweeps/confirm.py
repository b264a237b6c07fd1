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
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from sweeps import cli
from sweeps.experiment.files import CONFIRM_JSON, SPLIT_CSV, SWEEP_JSON
from sweeps.experiment.folder import Experiment, load_experiment, read_sweep_json
from sweeps.experiment.storage import Store, write_atomic
from trainables.core import metrics as M
from trainables.core.config import FIELD_TYPES, TrialConfig
from trainables.core.errors import UserError
from trainables.trial import checkpoint

NOT_CARRIED = ("seed", "fold")  # set anew by the confirmation: its seeds, its folds


def top_variants(experiment: Experiment, top: int, searched: bool) -> list[tuple[str, str]]:
    """(variant, its best trial) for the ``top`` variants by mean validation loss. In a
    searched study (TPE) every trial is a configuration of its own: the candidates are its
    trials, each named by its variant and trial id."""
    results = experiment.results()
    if results.empty:
        raise UserError(f"{experiment.root}: no trial gave a result; nothing to confirm")
    if searched:
        best = results.sort_values(M.BEST_VAL_LOSS, kind="stable").head(top)
        chosen = [(f"{v}[{t}]", str(t)) for v, t in zip(best["variant"], best["trial_id"])]
    else:
        means = results.groupby("variant")[M.BEST_VAL_LOSS].mean().sort_values(kind="stable")
        chosen = []
        for variant in means.index[:top]:
            rows = results[results["variant"] == variant]
            trial = str(rows.loc[rows[M.BEST_VAL_LOSS].idxmin(), "trial_id"])
            chosen.append((str(variant), trial))
    if len(chosen) < 2:
        raise UserError(
            f"{experiment.root}: only one variant gave a result ({chosen[0][0]}); confirming "
            "compares two or more: run the study with more variants"
        )
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
    from sweeps.driver.claim import check_idle

    experiment = load_experiment(source)
    check_idle(experiment.root, "wait for it to end before confirming its results")
    sweep = read_sweep_json(Store.from_location(str(experiment.root)), source)
    args = sweep.get("args", {})
    searched = bool(sweep.get("plan", {}).get("searched"))
    chosen = top_variants(experiment, top, searched)
    root = Path(storage) if storage else experiment.root.parent
    name = name or f"{experiment.root.name}-confirm"
    folder = root / name
    configs = {variant: recorded_config(experiment, trial) for variant, trial in chosen}
    plan = {
        "source": str(experiment.root.resolve()),
        "top": top,
        "folds": folds,
        "seeds": seeds,
        "chosen_by": "mean best validation loss over the source's trials",
        "variants": {v: {"from_trial": t, "config": configs[v]} for v, t in chosen},
    }
    resumed = _resumable(folder, plan)
    print(
        f"{'resuming' if resumed else 'confirming'} {len(chosen)} variant(s) of "
        f"{experiment.root} (lowest mean validation loss): {', '.join(v for v, _ in chosen)}; "
        f"{folds} folds x {seeds} seed(s) each -> {folder}",
        file=sys.stderr,
        flush=True,
    )
    made = folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / CONFIRM_JSON, json.dumps(plan, indent=1))
    # what every variant's study shares: the source's data, as it was subsampled, and
    # this command's folds, seeds and resources
    common = dict(
        data=sweep.get("data") or args.get("data"),
        smoke=bool(args.get("smoke")),
        max_per_class=args.get("max_per_class"),
        folds=folds,
        num_samples=seeds,
        cpus_per_trial=cpus_per_trial,
        max_concurrent=max_concurrent,
        address=address,
    )
    try:
        return _run_variants(experiment, folder, chosen, configs, common, args.get("split_seed"))
    except UserError:
        # a mistake found before any variant ran (folds more than a class has images, a
        # data folder gone) leaves no folder behind, so the corrected command can run
        if not made and not any(p.is_dir() for p in folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _resumable(folder: Path, plan: dict) -> bool:
    """True when ``folder`` holds an interrupted confirmation of the same plan (it is then
    continued); a folder of anything else is refused."""
    if not folder.exists():
        return False
    try:
        earlier = json.loads((folder / CONFIRM_JSON).read_text())
    except (OSError, ValueError):
        raise UserError(f"{folder}: exists already; pass another --name") from None
    if earlier != plan:
        raise UserError(
            f"{folder}: holds a confirmation of another plan (source, top, folds, seeds or "
            "variants differ); pass another --name, or the same options to resume it"
        )
    return True


def _run_variants(experiment, folder, chosen, configs, common: dict, split_seed):
    """Each chosen variant's folded study (resumed where an earlier run of this command left
    it), all on the first one's folds, then the verdict. ``common``: run_study's options
    shared by every variant; the data is the sweep's own resolved root, so a confirmation
    started from another folder than the sweep's finds it."""
    from sweeps.analysis.folds import out_of_fold, settle, show
    from sweeps.api import run_study

    pooled, left_out, split_file = [], [], None
    for variant, _ in chosen:
        where = folder / _folder_name(variant)
        if where.exists() and not (where / SWEEP_JSON).exists():
            shutil.rmtree(where)  # stopped before its sweep began: start it afresh
        if where.exists():  # an interrupted confirmation: the variant goes on (or is done)
            run_study(resume=where, address=common["address"])
        else:
            run_study(
                "single",
                overrides=configs[variant],
                storage=folder,
                name=_folder_name(variant),
                split_file=split_file,
                split_seed=None if split_file else split_seed,
                **common,
            )
        split_file = split_file or str(where / SPLIT_CSV)  # every variant on these folds
        runs, refused = out_of_fold(load_experiment(where))
        pooled += [replace(run, variant=variant) for run in runs]
        left_out += [f"{variant}: {reason}" for reason in refused]
        if not runs:  # every trial failed (a full disk): said, never silently dropped
            left_out.append(f"{variant}: no trial gave out-of-fold predictions")
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
    # 1: no verdict, or a chosen variant that could not be scored (its trials failed)
    return 0 if not settled.ranked.empty and not settled.left_out else 1


def cli_main() -> None:
    cli.run(main)


if __name__ == "__main__":
    cli.as_process(cli_main)
