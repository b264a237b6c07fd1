"""Out-of-fold results of a cross-validated experiment, and which variant is best.

Each image is tested exactly once over the folds, so a variant (at one seed) has one
prediction per image: its out-of-fold predictions, scored over all N images. Pairs of
variants are compared on the same images with McNemar's test (exact binomial, scipy), the
p-values corrected for the number of pairs with Holm's method (statsmodels).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from sweeps.experiment.files import OOF_CSV, PAIRS_CSV, RANKING_PNG, VERDICT_MD
from sweeps.experiment.folder import Experiment, load_trials
from sweeps.experiment.storage import write_atomic
from trainables.core import metrics as M
from trainables.core.csvcells import guarded
from trainables.core.errors import UserError
from trainables.stats import evaluation as E

ALPHA = 0.05


@dataclass(frozen=True)
class OutOfFold:
    """One variant at one seed: a prediction for every image of the experiment."""

    variant: str
    seed: int
    ids: np.ndarray  # image paths, in the experiment's split.csv order
    labels: np.ndarray
    probs: np.ndarray  # (N, classes)
    fold_acc: tuple[float, ...]  # each fold's own test accuracy
    val_loss: float  # mean over folds of the trials' best validation loss

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(1)


def out_of_fold(experiment: Experiment) -> tuple[list[OutOfFold], list[str]]:
    """Every (variant, seed) whose trials gave a result on every fold, pooled out of fold;
    and a line for each one left out (a fold failed, or its probabilities are unusable)."""
    if not experiment.fold_count:
        raise UserError(f"{experiment.root}: not a cross-validated experiment (run.py --folds)")
    order = {path: i for i, path in enumerate(experiment.all_ids)}
    parts: dict[tuple[str, int], dict[int, tuple]] = {}
    left_out = []
    for fold in range(experiment.fold_count):
        view = experiment.for_fold(fold)
        trials, refused = load_trials(view, strict=False)
        left_out += refused
        rows = view.table.set_index("trial_id")
        for trial in trials:
            seed = int(rows.loc[trial.trial_id, "seed"]) if "seed" in rows else 0
            parts.setdefault((trial.variant, seed), {})[fold] = (
                trial,
                view.test_ids,
                view.test_labels,
                float(rows.loc[trial.trial_id, M.BEST_VAL_LOSS]),
            )
    pooled = []
    for (variant, seed), by_fold in sorted(parts.items()):
        if len(by_fold) < experiment.fold_count:
            missing = sorted(set(range(experiment.fold_count)) - set(by_fold))
            left_out.append(
                f"{variant} seed {seed}: no result on fold(s) {missing}; left out "
                "of the out-of-fold ranking"
            )
            continue
        probs = np.zeros((len(order), len(experiment.class_names)))
        labels = np.zeros(len(order), dtype=np.int64)
        fold_acc = []
        for fold in range(experiment.fold_count):
            trial, ids, fold_labels, _ = by_fold[fold]
            where = np.asarray([order[i] for i in ids])
            probs[where], labels[where] = trial.test_probs, fold_labels
            fold_acc.append(E.accuracy(fold_labels, trial.test_probs.argmax(1)))
        pooled.append(
            OutOfFold(
                variant,
                seed,
                experiment.all_ids,
                labels,
                probs,
                tuple(fold_acc),
                float(np.mean([v[3] for v in by_fold.values()])),
            )
        )
    return pooled, left_out


def table(pooled: list[OutOfFold], class_names: list[str]) -> pd.DataFrame:
    """Per variant: out-of-fold accuracy and macro-F1 with intervals over all N images (the
    mean over seeds, with the interval of the median seed), the spread over folds and
    seeds, and each class's out-of-fold recall (mean over seeds). Ranked by mean validation
    loss: chosen on validation, never on test."""
    from sklearn.metrics import recall_score

    num_classes = len(class_names)
    rows = []
    for variant in sorted({p.variant for p in pooled}):
        runs = [p for p in pooled if p.variant == variant]
        scores = []
        for p in runs:
            acc = E.accuracy(p.labels, p.predicted)
            f1 = E.macro_f1(p.labels, p.predicted, num_classes)
            scores.append(
                (
                    acc,
                    f1,
                    E.accuracy_interval(p.labels, p.predicted),
                    E.macro_f1_interval(p.labels, p.predicted, num_classes),
                )
            )
        middle = sorted(range(len(scores)), key=lambda i: scores[i][0])[len(scores) // 2]
        folds = [a for p in runs for a in p.fold_acc]
        rows.append(
            {
                "variant": variant,
                "seeds": len(runs),
                "images": len(runs[0].labels),
                "val_loss": float(np.mean([p.val_loss for p in runs])),
                "oof_acc": float(np.mean([s[0] for s in scores])),
                "oof_acc_low": scores[middle][2][0],
                "oof_acc_high": scores[middle][2][1],
                "oof_macro_f1": float(np.mean([s[1] for s in scores])),
                "oof_macro_f1_low": scores[middle][3][0],
                "oof_macro_f1_high": scores[middle][3][1],
                "fold_acc_mean": float(np.mean(folds)),
                "fold_acc_std": float(np.std(folds)),
                "fold_acc_min": float(np.min(folds)),
                "fold_acc_max": float(np.max(folds)),
                **{
                    f"recall_{name}": float(value)
                    for name, value in zip(
                        class_names,
                        np.mean(
                            [
                                recall_score(
                                    p.labels,
                                    p.predicted,
                                    labels=list(range(num_classes)),
                                    average=None,
                                    zero_division=0,
                                )
                                for p in runs
                            ],
                            axis=0,
                        ),
                    )
                },
            }
        )
    return pd.DataFrame(rows).sort_values(["val_loss", "variant"]).reset_index(drop=True)


def holm(p_values: list[float], alpha: float = ALPHA) -> tuple[list[bool], list[float]]:
    """Holm's step-down correction (statsmodels): which nulls are rejected, adjusted p."""
    if not p_values:
        return [], []
    from statsmodels.stats.multitest import multipletests

    reject, adjusted, _, _ = multipletests(p_values, alpha=alpha, method="holm")
    return [bool(r) for r in reject], [float(p) for p in adjusted]


def pairwise(pooled: list[OutOfFold], ranking: list[str]) -> pd.DataFrame:
    """Every pair of variants: McNemar's test on their out-of-fold predictions of the same
    images, at each seed both have; a pair's p is the largest over those seeds (a lead
    counts only where it holds on every seed), then Holm-corrected over the pairs."""
    by = {(p.variant, p.seed): p for p in pooled}
    rows = []
    for a, b in combinations(ranking, 2):
        seeds = sorted({s for v, s in by if v == a} & {s for v, s in by if v == b})
        if not seeds:
            continue
        tests = [E.mcnemar(by[a, s].labels, by[a, s].predicted, by[b, s].predicted) for s in seeds]
        worst = max(tests, key=lambda t: t.p_value)
        rows.append(
            {
                "a": a,
                "b": b,
                "seeds": len(seeds),
                "only_a": worst.only_a,
                "only_b": worst.only_b,
                "p": worst.p_value,
            }
        )
    frame = pd.DataFrame(rows, columns=["a", "b", "seeds", "only_a", "only_b", "p"])
    reject, adjusted = holm(frame["p"].tolist())
    frame["p_holm"], frame["separated"] = adjusted, reject
    return frame


def verdict(ranked: pd.DataFrame, pairs: pd.DataFrame) -> str:
    """One line: the best variant (by validation loss) and whether its lead over the
    runner-up is distinguishable on these images."""
    if ranked.empty:
        return "no variant has out-of-fold predictions on every fold; no verdict"
    best = ranked.iloc[0]
    score = (
        f"out-of-fold accuracy {best['oof_acc']:.4f} [{best['oof_acc_low']:.3f}, "
        f"{best['oof_acc_high']:.3f}] on {best['images']} images"
    )
    if len(ranked) < 2 or pairs.empty:
        return f"{best['variant']}: {score} (one variant: nothing to compare it with)"
    second = ranked.iloc[1]
    row = _pair(pairs, best["variant"], second["variant"]).iloc[0]
    how = "is" if row["separated"] else "is not"
    tests = (
        f"(McNemar p = {row['p']:.3g}, Holm-corrected p = {row['p_holm']:.3g} over "
        f"{len(pairs)} pair(s), alpha {ALPHA:g})"
    )
    if best["oof_acc"] >= second["oof_acc"]:
        line = (
            f"{best['variant']} is best ({score}); its lead over {second['variant']} {how} "
            f"distinguishable {tests}"
        )
    else:  # first by validation loss, yet less accurate out of fold: a deficit, not a lead
        line = (
            f"{best['variant']} ranks first by validation loss ({score}), but "
            f"{second['variant']} is more accurate out of fold ({second['oof_acc']:.4f}); the "
            f"difference {how} distinguishable {tests}"
        )
    return line + _more_accurate(ranked, pairs, best, skip=second["variant"])


def _more_accurate(ranked: pd.DataFrame, pairs: pd.DataFrame, best, skip: str) -> str:
    """The variants below the best by validation loss that are more accurate out of fold
    than it, distinguishably (Holm-corrected): what choosing by validation loss gives up
    (better calibrated probabilities are not more right answers); "" when there are none."""
    better = []
    for _, other in ranked.iloc[1:].iterrows():
        row = _pair(pairs, best["variant"], other["variant"])
        if other["variant"] == skip or other["oof_acc"] <= best["oof_acc"] or row.empty:
            continue
        if bool(row["separated"].iloc[0]):
            better.append(
                f"{other['variant']} ({other['oof_acc']:.4f}, Holm-corrected p = "
                f"{row['p_holm'].iloc[0]:.3g})"
            )
    if not better:
        return ""
    return f"; more accurate out of fold than {best['variant']}, distinguishably: " + ", ".join(
        better
    )


def ranking_figure(ranked: pd.DataFrame, pairs: pd.DataFrame, path) -> None:
    """The ranking with intervals, and which pairs the corrected tests separate (a critical-
    difference style plot: variants joined by a bar are not distinguishable)."""
    from sweeps.analysis.plots import pyplot

    plt = pyplot()
    n = len(ranked)
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.45 * n))
    y = np.arange(n)[::-1]
    acc = ranked["oof_acc"].to_numpy()
    err = np.vstack(
        [acc - ranked["oof_acc_low"].to_numpy(), ranked["oof_acc_high"].to_numpy() - acc]
    )
    ax.errorbar(acc, y, xerr=err, fmt="o", color="black", capsize=3)
    ax.set_yticks(y, ranked["variant"].tolist())
    ax.set_xlabel("out-of-fold accuracy, 95% Wilson interval (ranked by validation loss)")
    position = dict(zip(ranked["variant"], y))
    right = float(ranked["oof_acc_high"].max()) + 0.01
    groups = []
    for i, variant in enumerate(ranked["variant"]):  # runs of variants not separated
        joined = [
            v
            for v in ranked["variant"].iloc[i:]
            if v == variant or not _separated(pairs, variant, v)
        ]
        if len(joined) > 1 and not any(set(joined) <= set(g) for g in groups):
            groups.append(joined)
    for k, group in enumerate(groups):
        x = right + 0.012 * k
        ys = [position[v] for v in group]
        ax.plot([x, x], [min(ys), max(ys)], color="tab:red", linewidth=3)
    ax.set_title("joined in red: not distinguishable (McNemar, Holm-corrected)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _pair(pairs: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """The row of the pair a, b (in either order), or none."""
    return pairs[((pairs["a"] == a) & (pairs["b"] == b)) | ((pairs["a"] == b) & (pairs["b"] == a))]


def _separated(pairs: pd.DataFrame, a: str, b: str) -> bool:
    row = _pair(pairs, a, b)
    return bool(row["separated"].iloc[0]) if len(row) else False


@dataclass(frozen=True)
class Settled:
    ranked: pd.DataFrame
    pairs: pd.DataFrame
    line: str
    left_out: list[str]


def settle(pooled: list[OutOfFold], class_names: list[str], out, left_out=()) -> Settled:
    """Rank, test every pair, and write results_oof.csv, pairs.csv, verdict.md and
    ranking.png into ``out``."""
    from pathlib import Path

    out = Path(out)
    ranked = table(pooled, class_names) if pooled else pd.DataFrame()
    pairs = pairwise(pooled, ranked["variant"].tolist()) if pooled else pd.DataFrame()
    line = verdict(ranked, pairs)
    if not ranked.empty:
        write_atomic(out / OOF_CSV, guarded(ranked).to_csv(index=False))
        write_atomic(out / PAIRS_CSV, guarded(pairs).to_csv(index=False))
        ranking_figure(ranked, pairs, out / RANKING_PNG)
    markdown = ["# Which variant is best (out of fold)", "", line, ""]
    if not ranked.empty:
        markdown += [
            ranked.to_markdown(index=False, floatfmt=".4g"),
            "",
            "## Every pair (McNemar on the same images; Holm over the pairs)",
            "",
            pairs.to_markdown(index=False, floatfmt=".4g"),
            "",
        ]
    markdown += [f"- left out: {reason}" for reason in left_out]
    write_atomic(out / VERDICT_MD, "\n".join(markdown) + "\n")
    return Settled(ranked, pairs, line, list(left_out))


def settle_experiment(experiment: Experiment) -> Settled:
    """A cross-validated experiment's own verdict, written into its folder."""
    pooled, left_out = out_of_fold(experiment)
    return settle(pooled, experiment.class_names, experiment.root, left_out)


def show(settled: Settled) -> str:
    """What a command prints: the table's main columns, then the verdict line."""
    if settled.ranked.empty:
        return settled.line
    columns = [
        "variant",
        "seeds",
        "val_loss",
        "oof_acc",
        "oof_acc_low",
        "oof_acc_high",
        "oof_macro_f1",
        "fold_acc_std",
    ]
    return settled.ranked[columns].to_markdown(index=False, floatfmt=".4g") + "\n\n" + settled.line
