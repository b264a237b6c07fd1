"""Build ensembles from a finished experiment's saved probabilities.

    python sweeps/ensemble.py EXPERIMENT_DIR [--top 5] [--trials ID ID ...]
    python sweeps/ensemble.py EXPERIMENT_DIR MORE_DIR ... --out DIR [--top 5]

Members are chosen on the validation split only (ranked by validation loss; greedy selection
scores on validation; stacking's meta-model is fit and cross-validated inside validation)
and every ensemble is scored once on the test split. Members vote with calibrated
probabilities: each at the temperature it fits on validation (trainables/stats/calibration.py).
The table (best single model vs soft vote, hard vote, stacking and greedy selection, with
members and weights, 95% intervals and McNemar's test against the best single model) is
printed and saved as ensembles.csv / ensembles.md in the experiment folder.

A cross-validated experiment (run.py --folds) builds the ensembles fold by fold, each from
that fold's trials, chosen on its validation images and scored on its test images; each
kind's test predictions are then pooled over the folds and scored over all images.

Several experiments run on one split (the same data, --seed and --folds: say a probe study
and a fine-tuning study) are ensembled as one pool of trials, each member named by its
experiment (``NAME/variant``); their table goes to ``--out``, so that each experiment's own
stays as it was.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from sweeps import cli
from sweeps.experiment.files import ENSEMBLES_CSV, ENSEMBLES_MD
from sweeps.experiment.folder import Experiment, TrialPredictions, load_experiment, load_trials
from sweeps.experiment.storage import write_atomic
from trainables.core.csvcells import guarded
from trainables.core.errors import UserError
from trainables.stats import evaluation as E


def score_row(
    name: str,
    members: list[TrialPredictions],
    weights,
    predicted_val,
    predicted_test,
    val_labels,
    test_labels,
    num_classes: int,
) -> dict:
    acc_low, acc_high = E.accuracy_interval(test_labels, predicted_test)
    f1_low, f1_high = E.macro_f1_interval(test_labels, predicted_test, num_classes)
    row = {
        "ensemble": name,
        "members": " ".join(f"{m.variant}[{m.trial_id}]" for m in members),
        "weights": " ".join(f"{w:g}" for w in weights),
        "val_acc": E.accuracy(val_labels, predicted_val),
        "test_acc": E.accuracy(test_labels, predicted_test),
        "test_acc_low": acc_low,
        "test_acc_high": acc_high,
        "test_macro_f1": E.macro_f1(test_labels, predicted_test, num_classes),
        "test_macro_f1_low": f1_low,
        "test_macro_f1_high": f1_high,
    }
    return row


def build(
    trials: list[TrialPredictions],
    val_labels,
    test_labels,
    num_classes: int,
    ranking: list[str],
    top: int,
    steps: int,
    calibrate: bool = True,
) -> tuple[pd.DataFrame, list[str], dict[str, tuple]]:
    """The ensemble table, McNemar lines, and each ensemble's (members, predicted test
    classes) by kind. ``ranking`` orders trial ids best first by validation loss; the best
    single model and the top-k votes follow it."""
    if calibrate:
        trials = [calibrated(t, val_labels) for t in trials]
    by_id = {t.trial_id: t for t in trials}
    ranked = [by_id[i] for i in ranking if i in by_id]
    best = ranked[0]
    reference = best.test_probs.argmax(1)
    rows = [
        score_row(
            "best single (lowest val loss)",
            [best],
            [1],
            best.val_probs.argmax(1),
            reference,
            val_labels,
            test_labels,
            num_classes,
        )
    ]
    lines = []
    predictions = {"best single": ([best], reference)}
    chosen = ranked[:top]
    soft_val = E.soft_vote([m.val_probs for m in chosen])
    soft_test = E.soft_vote([m.test_probs for m in chosen])
    candidates = [
        (
            f"soft vote, top {len(chosen)}",
            chosen,
            [1] * len(chosen),
            soft_val.argmax(1),
            soft_test.argmax(1),
        ),
        (
            f"hard vote, top {len(chosen)}",
            chosen,
            [1] * len(chosen),
            E.hard_vote([m.val_probs for m in chosen]),
            E.hard_vote([m.test_probs for m in chosen]),
        ),
    ]
    stacked = E.stacking([m.val_probs for m in chosen], val_labels, [m.test_probs for m in chosen])
    if stacked is None:
        lines.append("no stacking: some class has fewer than 2 validation images")
    else:
        candidates.append(
            (
                f"stacking, top {len(chosen)} (logistic regression, C "
                f"{stacked.c:.3g} by {stacked.folds}-fold CV on validation)",
                chosen,
                [1] * len(chosen),
                stacked.val_predicted,
                stacked.test_predicted,
            )
        )
    counts = E.greedy_selection([m.val_probs for m in ranked], val_labels, steps=steps)
    picked = [(m, c) for m, c in zip(ranked, counts) if c > 0]
    members, weights = [m for m, _ in picked], [int(c) for _, c in picked]
    candidates.append(
        (
            f"greedy selection ({sum(weights)} picks)",
            members,
            weights,
            E.soft_vote([m.val_probs for m in members], weights).argmax(1),
            E.soft_vote([m.test_probs for m in members], weights).argmax(1),
        )
    )
    kinds = [
        "soft vote",
        "hard vote",
        *(["stacking"] if stacked is not None else []),
        "greedy selection",
    ]
    for kind, (name, members, weights, predicted_val, predicted_test) in zip(kinds, candidates):
        predictions[kind] = (members, predicted_test)
        row = score_row(
            name,
            members,
            weights,
            predicted_val,
            predicted_test,
            val_labels,
            test_labels,
            num_classes,
        )
        test = E.mcnemar(test_labels, predicted_test, reference)
        row.update(
            mcnemar_only_ensemble=test.only_a,
            mcnemar_only_single=test.only_b,
            mcnemar_p=test.p_value,
        )
        rows.append(row)
        lines.append(test.line(name, "best single"))
    return pd.DataFrame(rows), lines, predictions


def calibrated(trial: TrialPredictions, val_labels) -> TrialPredictions:
    """The member's probabilities at the temperature it fits on validation, so that an
    over-confident member does not outvote the others. A member's own predictions do not
    change; votes and stacking combine calibrated probabilities."""
    from dataclasses import replace

    from trainables.stats.calibration import fit_temperature, scaled

    temperature = fit_temperature(trial.val_probs, val_labels)
    return replace(
        trial,
        val_probs=scaled(trial.val_probs, temperature),
        test_probs=scaled(trial.test_probs, temperature),
    )


def pooled_over_folds(
    per_fold: list[tuple[dict, np.ndarray]], num_classes: int
) -> tuple[pd.DataFrame, list[str]]:
    """A cross-validated experiment's ensembles: each fold builds its own from its trials
    (chosen on its validation images, scored on its test images), and each kind's test
    predictions are pooled over the folds: one prediction per image, scored over all N,
    with McNemar against the pooled best single model."""
    kinds = [k for k in per_fold[0][0] if all(k in found for found, _ in per_fold)]
    labels = np.concatenate([fold_labels for _, fold_labels in per_fold])
    reference = np.concatenate([found["best single"][1] for found, _ in per_fold])
    rows, lines = [], []
    for kind in kinds:
        predicted = np.concatenate([found[kind][1] for found, _ in per_fold])
        members = sorted({f"{m.variant}" for found, _ in per_fold for m in found[kind][0]})
        acc_low, acc_high = E.accuracy_interval(labels, predicted)
        f1_low, f1_high = E.macro_f1_interval(labels, predicted, num_classes)
        row = {
            "ensemble": f"{kind}, pooled over {len(per_fold)} folds",
            "members": " ".join(members),
            "images": len(labels),
            "test_acc": E.accuracy(labels, predicted),
            "test_acc_low": acc_low,
            "test_acc_high": acc_high,
            "test_macro_f1": E.macro_f1(labels, predicted, num_classes),
            "test_macro_f1_low": f1_low,
            "test_macro_f1_high": f1_high,
        }
        if kind != "best single":
            test = E.mcnemar(labels, predicted, reference)
            row.update(
                mcnemar_only_ensemble=test.only_a,
                mcnemar_only_single=test.only_b,
                mcnemar_p=test.p_value,
            )
            lines.append(test.line(f"{kind} (out of fold)", "best single (out of fold)"))
        rows.append(row)
    return pd.DataFrame(rows), lines


def _built(experiments: list[Experiment], trial_ids, args, where: str):
    """The ensembles of the experiments' trials (``trial_ids``, or every one with a result,
    those whose probabilities are unusable left out with a line), ranked together by
    validation loss; with several experiments each member is named by its own."""
    trials, losses = [], {}
    for experiment in experiments:
        loaded, refused = load_trials(experiment, trial_ids, strict=trial_ids is not None)
        for reason in refused:
            print(f"left out: {reason}", file=sys.stderr)
        table = experiment.table.set_index("trial_id")
        for trial in loaded:
            if trial.trial_id in losses:
                raise UserError(
                    f"trial {trial.trial_id} is in {experiment.root} and in another of the "
                    "experiments passed (a copied folder?); pass each experiment once"
                )
            losses[trial.trial_id] = table.loc[trial.trial_id, "best_val_loss"]
            if len(experiments) > 1:
                trial = replace(trial, variant=f"{experiment.root.name}/{trial.variant}")
            trials.append(trial)
    if len(trials) < 2:
        raise UserError(
            f"{where}: {len(trials)} trial(s) with usable probabilities; an "
            "ensemble needs at least 2"
        )
    first = experiments[0]
    return build(
        trials,
        first.val_labels,
        first.test_labels,
        len(first.class_names),
        sorted(losses, key=lambda i: (losses[i], i)),
        args.top,
        args.steps,
        calibrate=not args.uncalibrated,
    )


def _one_split(experiments: list[Experiment]) -> None:
    """Refuse experiments that were not run on one split: an ensemble's members must have
    been chosen on the same validation images and scored on the same test images."""
    first = experiments[0]
    seen = set()
    for experiment in experiments:
        where = experiment.root.resolve()
        if where in seen:
            raise UserError(f"{experiment.root}: passed twice; pass each experiment once")
        seen.add(where)
        same = experiment.class_names == first.class_names and all(
            # a part absent from both (None: no folds) is equal, absent from one is not
            np.array_equal(getattr(experiment, part), getattr(first, part))
            for part in (
                "val_ids",
                "test_ids",
                "val_labels",
                "test_labels",
                "all_ids",
                "all_labels",
                "folds",
            )
        )
        if not same:
            raise UserError(
                f"{experiment.root}: its split differs from {first.root}'s (other images, "
                "labels, classes or folds); ensembles combine experiments run on one split: "
                "run them with the same --data, --seed and --folds"
            )


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__, "python sweeps/ensemble.py")
    parser.add_argument(
        "experiments",
        nargs="+",
        metavar="EXPERIMENT_DIR",
        help="an experiment folder; several, run on one split, are ensembled together",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="where the table goes (default: the experiment folder; needed with several)",
    )
    parser.add_argument(
        "--trials",
        nargs="+",
        metavar="ID",
        help="build from exactly these trials (trial_id column of results.csv)",
    )
    parser.add_argument(
        "--top",
        type=cli.number(int, low=2),
        default=5,
        help="members of the soft and hard votes: the K trials with the lowest "
        "validation loss (default 5)",
    )
    parser.add_argument(
        "--uncalibrated",
        action="store_true",
        help="vote with the trials' own softmax, not calibrated probabilities",
    )
    parser.add_argument(
        "--steps",
        type=cli.number(int, low=1),
        default=25,
        help="picks of greedy selection, with replacement (default 25)",
    )
    args = parser.parse_args(argv)
    several = len(args.experiments) > 1
    if several and args.trials:
        raise UserError(
            "--trials names one experiment's trials: with several experiments each one's "
            "trials with a result are used; drop --trials or pass one experiment"
        )
    if several and not args.out:
        raise UserError(
            "several experiments: say where their table goes with --out DIR (each "
            "experiment's own ensembles.csv stays as it was)"
        )
    experiments = [load_experiment(path) for path in args.experiments]
    _one_split(experiments)
    experiment = experiments[0]
    out = Path(args.out) if args.out else experiment.root
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: not a folder; pass a folder for the table")
    where = " + ".join(str(e.root) for e in experiments)
    if experiment.fold_count:  # cross-validated: per fold, then pooled out of fold
        if args.trials:
            raise UserError(
                "--trials: a cross-validated experiment builds its ensembles fold "
                "by fold from each fold's trials; drop --trials"
            )
        per_fold = []
        for fold in range(experiment.fold_count):
            views = [e.for_fold(fold) for e in experiments]
            _, _, found = _built(views, None, args, f"fold {fold} of {where}")
            per_fold.append((found, views[0].test_labels))
        result, lines = pooled_over_folds(per_fold, len(experiment.class_names))
    else:
        result, lines, _ = _built(experiments, args.trials, args, where)
    markdown = result.to_markdown(index=False, floatfmt=".4g")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / ENSEMBLES_CSV, guarded(result).to_csv(index=False))
    write_atomic(
        out / ENSEMBLES_MD,
        "# Ensembles (chosen on validation, scored once on test)\n\n"
        + (f"Of the trials of {where}.\n\n" if several else "")
        + markdown
        + "\n\n"
        + "\n".join(f"- {line}" for line in lines)
        + "\n",
    )
    print(markdown)
    print()
    for line in lines:
        print(line)
    print(
        "greedy selection's val_acc is what it optimised, stacking's is out of fold: "
        "compare test_acc"
    )
    print(f"table: {out / ENSEMBLES_CSV}")
    if several:  # a tracked sweep's run holds its own experiment's ensembles only
        return 0
    from sweeps.sinks.tracking import log_files

    tracked = log_files(experiment.root, [out / ENSEMBLES_CSV, out / ENSEMBLES_MD], "ensembles")
    if tracked:
        print(tracked)
    return 0


def cli_main() -> None:
    cli.run(main)


if __name__ == "__main__":
    cli.as_process(cli_main)
