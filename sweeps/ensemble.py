"""Build ensembles from a finished experiment's saved probabilities.

    python sweeps/ensemble.py EXPERIMENT_DIR [--top 5] [--trials ID ID ...]

Members are chosen on the validation split only (ranked by validation loss; greedy selection
scores on validation; stacking's meta-model is fit and cross-validated inside validation)
and every ensemble is scored once on the test split. The table (best single model vs soft
vote, hard vote, stacking and greedy selection, with members and weights, 95% bootstrap
intervals and McNemar's test against the best single model) is printed and saved as
ensembles.csv / ensembles.md in the experiment folder.
"""
from __future__ import annotations

import sys

import pandas as pd

from sweeps.experiment.files import ENSEMBLES_CSV, ENSEMBLES_MD
from sweeps import cli
from sweeps.experiment.folder import TrialPredictions, load_experiment, load_trials
from sweeps.experiment.storage import write_atomic
from trainables import evaluation as E
from trainables.errors import UserError



def score_row(name: str, members: list[TrialPredictions], weights, predicted_val, predicted_test,
              val_labels, test_labels, num_classes: int) -> dict:
    acc_low, acc_high = E.accuracy_interval(test_labels, predicted_test)
    f1_low, f1_high = E.macro_f1_interval(test_labels, predicted_test, num_classes)
    row = {
        "ensemble": name,
        "members": " ".join(f"{m.variant}[{m.trial_id}]" for m in members),
        "weights": " ".join(f"{w:g}" for w in weights),
        "val_acc": E.accuracy(val_labels, predicted_val),
        "test_acc": E.accuracy(test_labels, predicted_test),
        "test_acc_low": acc_low, "test_acc_high": acc_high,
        "test_macro_f1": E.macro_f1(test_labels, predicted_test, num_classes),
        "test_macro_f1_low": f1_low, "test_macro_f1_high": f1_high,
    }
    return row


def build(trials: list[TrialPredictions], val_labels, test_labels, num_classes: int,
          ranking: list[str], top: int, steps: int) -> tuple[pd.DataFrame, list[str]]:
    """The ensemble table and McNemar lines. ``ranking`` orders trial ids best first by
    validation loss; the best single model and the top-k votes follow it."""
    by_id = {t.trial_id: t for t in trials}
    ranked = [by_id[i] for i in ranking if i in by_id]
    best = ranked[0]
    reference = best.test_probs.argmax(1)
    rows = [score_row("best single (lowest val loss)", [best], [1], best.val_probs.argmax(1),
                      reference, val_labels, test_labels, num_classes)]
    lines = []
    chosen = ranked[:top]
    soft_val = E.soft_vote([m.val_probs for m in chosen])
    soft_test = E.soft_vote([m.test_probs for m in chosen])
    candidates = [
        (f"soft vote, top {len(chosen)}", chosen, [1] * len(chosen),
         soft_val.argmax(1), soft_test.argmax(1)),
        (f"hard vote, top {len(chosen)}", chosen, [1] * len(chosen),
         E.hard_vote([m.val_probs for m in chosen]), E.hard_vote([m.test_probs for m in chosen])),
    ]
    stacked = E.stacking([m.val_probs for m in chosen], val_labels,
                         [m.test_probs for m in chosen])
    if stacked is None:
        lines.append("no stacking: some class has fewer than 2 validation images")
    else:
        candidates.append((f"stacking, top {len(chosen)} (logistic regression, C "
                           f"{stacked.c:.3g} by {stacked.folds}-fold CV on validation)",
                           chosen, [1] * len(chosen), stacked.val_predicted,
                           stacked.test_predicted))
    counts = E.greedy_selection([m.val_probs for m in ranked], val_labels, steps=steps)
    picked = [(m, c) for m, c in zip(ranked, counts) if c > 0]
    members, weights = [m for m, _ in picked], [int(c) for _, c in picked]
    candidates.append((
        f"greedy selection ({sum(weights)} picks)", members, weights,
        E.soft_vote([m.val_probs for m in members], weights).argmax(1),
        E.soft_vote([m.test_probs for m in members], weights).argmax(1)))
    for name, members, weights, predicted_val, predicted_test in candidates:
        row = score_row(name, members, weights, predicted_val, predicted_test, val_labels,
                        test_labels, num_classes)
        test = E.mcnemar(test_labels, predicted_test, reference)
        row.update(mcnemar_only_ensemble=test.only_a, mcnemar_only_single=test.only_b,
                   mcnemar_p=test.p_value)
        rows.append(row)
        lines.append(test.line(name, "best single"))
    return pd.DataFrame(rows), lines


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__, "python sweeps/ensemble.py")
    parser.add_argument("experiment", metavar="EXPERIMENT_DIR")
    parser.add_argument("--trials", nargs="+", metavar="ID",
                        help="build from exactly these trials (trial_id column of results.csv)")
    parser.add_argument("--top", type=cli.number(int, low=2), default=5,
                        help="members of the soft and hard votes: the K trials with the lowest "
                             "validation loss (default 5)")
    parser.add_argument("--steps", type=cli.number(int, low=1), default=25,
                        help="picks of greedy selection, with replacement (default 25)")
    args = parser.parse_args(argv)
    experiment = load_experiment(args.experiment)
    trials, refused = load_trials(experiment, args.trials, strict=args.trials is not None)
    for reason in refused:
        print(f"left out: {reason}", file=sys.stderr)
    if len(trials) < 2:
        raise UserError(f"{experiment.root}: {len(trials)} trial(s) with usable probabilities; "
                        "an ensemble needs at least 2")
    table = experiment.table.set_index("trial_id")
    ranking = sorted((t.trial_id for t in trials),
                     key=lambda i: (table.loc[i, "best_val_loss"], i))
    result, lines = build(trials, experiment.val_labels, experiment.test_labels,
                          len(experiment.class_names), ranking, args.top, args.steps)
    markdown = result.to_markdown(index=False, floatfmt=".4g")
    write_atomic(experiment.root / ENSEMBLES_CSV, result.to_csv(index=False))
    write_atomic(experiment.root / ENSEMBLES_MD,
                 "# Ensembles (chosen on validation, scored once on test)\n\n" + markdown
                 + "\n\n" + "\n".join(f"- {line}" for line in lines) + "\n")
    print(markdown)
    print()
    for line in lines:
        print(line)
    print("greedy selection's val_acc is what it optimised, stacking's is out of fold: "
          "compare test_acc")
    print(f"table: {experiment.root / ENSEMBLES_CSV}")
    from sweeps.sinks.tracking import log_files

    tracked = log_files(experiment.root, [experiment.root / ENSEMBLES_CSV,
                                          experiment.root / ENSEMBLES_MD], "ensembles")
    if tracked:
        print(tracked)
    return 0


def cli_main() -> None:
    cli.run(main)


if __name__ == "__main__":
    cli_main()
