"""Choosing a space's ASHA settings from a measurement: replay ASHA over a sweep that ran
every trial to its end (``--scheduler fifo``). Each trial's recorded epochs (their val loss,
their best-so-far test accuracy, their seconds) are fed, in the order and with the
concurrency the sweep ran them, to Ray Tune's own ASHA bracket, for each grace period and
reduction factor asked; a trial is cut where the bracket says STOP. Printed per setting:
epochs and (simulated) wall time spent, the trial picked (lowest best val loss) and its test
accuracy, and the trials whose reported test accuracy ends up more than ``--tolerance`` below
what full training gave them, which is what a strategy comparison gets wrong.

``--check ASHA_EXPERIMENT`` compares the replay of the first ``--grace`` and
``--reduction-factor`` given with what a real ASHA run of the same space and seeds, made with
that setting, did: the epoch each trial ended at.

    python asha.py --space googlenet_strategies --rounds 1     # writes fifo-r0 and asha-r0
    python asha_replay.py /tmp/bench-asha-XXXX/fifo-r0 --grace 7,10,14,21 \\
        --check /tmp/bench-asha-XXXX/asha-r0
"""

from __future__ import annotations

import argparse
import heapq
import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd


def load(experiment: Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    table = pd.read_csv(experiment / "results.csv", dtype={"trial_id": str})
    progress = {}
    trial_dirs = [p for p in experiment.iterdir() if p.is_dir()]
    for trial_id in table["trial_id"]:
        folders = [p for p in trial_dirs if p.name.endswith(trial_id)]
        if len(folders) != 1:
            raise SystemExit(
                f"{experiment}: expected one folder for trial {trial_id}, found {len(folders)}"
            )
        progress[trial_id] = pd.read_csv(folders[0] / "progress.csv").sort_values("epoch")
    return table.sort_values("trial_id").reset_index(drop=True), progress


def replay(
    table,
    progress,
    grace: int | None,
    rf: int,
    max_t: int,
    concurrent: int,
    metric: str = "val_loss",
) -> dict:
    """Trials start in trial order on ``concurrent`` slots; an epoch ends after the seconds it
    took in the full run; ASHA (Ray's own bracket) sees each epoch's ``metric`` as it ends
    (``val_loss`` is minimised, as the sweeps do; ``val_acc`` maximised, to compare).
    ``grace=None``: no ASHA, every trial runs all its recorded epochs."""
    from ray.tune.schedulers.async_hyperband import _Bracket

    bracket = (
        None if grace is None else _Bracket(min_t=grace, max_t=max_t, reduction_factor=rf, s=0)
    )
    waiting = list(table["trial_id"])
    events: list[tuple[float, str, int]] = []  # (time an epoch ends, trial, its row index)
    ended: dict[str, int] = {}
    clock = 0.0

    def start(now: float) -> None:
        if waiting:
            trial = waiting.pop(0)
            heapq.heappush(events, (now + progress[trial]["time_this_iter_s"].iloc[0], trial, 0))

    for _ in range(concurrent):
        start(0.0)
    while events:
        clock, trial, row = heapq.heappop(events)
        rows = progress[trial]
        epoch = int(rows["epoch"].iloc[row])
        sign = -1.0 if metric == "val_loss" else 1.0  # Ray's reward: larger is better
        action = (
            None
            if bracket is None
            else bracket.on_result(
                SimpleNamespace(trial_id=trial), epoch, sign * float(rows[metric].iloc[row])
            )
        )
        if action == "STOP" or row + 1 == len(rows):
            ended[trial] = row
            start(clock)
        else:
            heapq.heappush(events, (clock + rows["time_this_iter_s"].iloc[row + 1], trial, row + 1))
    reported = {t: progress[t].iloc[row] for t, row in ended.items()}
    return {
        "epochs": {t: int(r["epoch"]) for t, r in reported.items()},
        "test_acc": {t: float(r["test_acc"]) for t, r in reported.items()},
        "best_val_loss": {t: float(r["best_val_loss"]) for t, r in reported.items()},
        "seconds": clock,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fifo_experiment", type=Path, help="a sweep run with --scheduler fifo")
    parser.add_argument("--grace", default="7", help="grace periods to try, comma-separated")
    parser.add_argument("--reduction-factor", default="3", help="comma-separated")
    parser.add_argument("--max-t", type=int, default=50, help="the space's max_epochs")
    parser.add_argument(
        "--concurrent",
        type=int,
        default=2,
        help="trials at once, as in the real sweep (2 on a 2-core machine)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.02,
        help="a trial reported this far below its full-training test "
        "accuracy counts as misreported",
    )
    parser.add_argument(
        "--metric",
        choices=("val_loss", "val_acc"),
        default="val_loss",
        help="what ASHA compares (the sweeps use val_loss)",
    )
    parser.add_argument(
        "--check",
        type=Path,
        help="a real ASHA run of the same space and seeds, made with the "
        "first --grace and --reduction-factor",
    )
    args = parser.parse_args()

    sweep = json.loads((args.fifo_experiment / "sweep.json").read_text())
    if sweep["args"].get("scheduler") != "fifo":
        raise SystemExit(f"{args.fifo_experiment}: not a --scheduler fifo sweep")
    table, progress = load(args.fifo_experiment)
    variant = dict(zip(table["trial_id"], table["variant"]))
    full = {t: float(p["test_acc"].iloc[-1]) for t, p in progress.items()}
    full_epochs = sum(len(p) for p in progress.values())
    full_run = replay(
        table, progress, grace=None, rf=3, max_t=args.max_t, concurrent=args.concurrent
    )
    pick = table.loc[table["best_val_loss"].idxmin()]
    print(
        f"{args.fifo_experiment}: {len(table)} trials of {sweep['space']}; run to their end: "
        f"{full_epochs} epochs, {full_run['seconds']:.0f} s simulated; pick {pick['variant']} "
        f"(test acc {pick['test_acc']:.4f})\n"
    )
    print(
        f"{'grace':>5} {'rf':>3} {'epochs':>7} {'of full':>8} {'sim s':>7} {'of full':>8}  "
        f"{'pick (test acc)':<32} misreported (reported vs full test acc)"
    )
    for rf in (int(v) for v in args.reduction_factor.split(",")):
        for grace in (int(v) for v in args.grace.split(",")):
            run = replay(table, progress, grace, rf, args.max_t, args.concurrent, args.metric)
            epochs = sum(run["epochs"].values())
            chosen = min(run["best_val_loss"], key=run["best_val_loss"].get)
            wrong = [
                f"{variant[t]} {run['test_acc'][t]:.3f} vs {full[t]:.3f}"
                for t in run["test_acc"]
                if run["test_acc"][t] < full[t] - args.tolerance
            ]
            picked = f"{variant[chosen]} ({run['test_acc'][chosen]:.4f})"
            print(
                f"{grace:>5} {rf:>3} {epochs:>7} {epochs / full_epochs:>8.2f} "
                f"{run['seconds']:>7.0f} {run['seconds'] / full_run['seconds']:>8.2f}  "
                f"{picked:<32} "
                f"{len(wrong)}: {'; '.join(wrong) or '-'}"
            )

    if args.check:
        real_table, _ = load(args.check)
        real = dict(zip(real_table["variant"], real_table["epochs"]))
        grace = int(args.grace.split(",")[0])
        rf = int(args.reduction_factor.split(",")[0])
        run = replay(table, progress, grace, rf, args.max_t, args.concurrent, args.metric)
        same = sum(real[variant[t]] == e for t, e in run["epochs"].items())
        print(
            f"\ncheck against {args.check} (grace {grace}, rf {rf}): "
            f"the replay ends {same} of {len(run['epochs'])} trials at the same epoch"
        )
        for t, e in run["epochs"].items():
            mark = "" if real[variant[t]] == e else "   <- differs"
            print(f"  {variant[t]:<32} replay {e:>3}  real {real[variant[t]]:>3}{mark}")


if __name__ == "__main__":
    main()
