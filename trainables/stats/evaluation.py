"""Numbers with their uncertainty, and ensembles, from saved class probabilities.

Everything here works on plain arrays: ``labels`` (n,) ints, ``probs`` (n, classes) rows that
sum to one. The trainable calls :func:`test_summary` when a trial's best weights change; the
ensemble and report commands call the rest on the probabilities the trials saved.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

# scipy.stats and sklearn.metrics are imported where they are used: together 2 s of every
# command's start (the sweep driver, a trial's worker) that most of them never need

BOOTSTRAP_SAMPLES = 2000
LEVEL = 0.95
# Which interval each number gets: accuracy (and any proportion of images) the Wilson
# score interval; macro-F1 a BCa bootstrap (accuracy's Wilson interval at the edges).


def accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean(labels == predicted)) if len(labels) else float("nan")


def macro_f1(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    from sklearn.metrics import f1_score

    return float(
        f1_score(
            labels, predicted, labels=list(range(num_classes)), average="macro", zero_division=0
        )
    )


def accuracy_interval(labels, predicted, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of accuracy, a proportion of the images (scipy's binomtest).
    Unlike a bootstrap it does not collapse at the edges: no errors in n images gives
    [n / (n + z^2), 1], all errors [0, z^2 / (n + z^2)]."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    if not len(labels):
        return float("nan"), float("nan")
    from scipy.stats import binomtest

    correct = int(np.sum(labels == predicted))
    ci = binomtest(correct, len(labels)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def _macro_f1_batch(
    labels: np.ndarray, predicted: np.ndarray, num_classes: int, axis: int = -1
) -> np.ndarray:
    """Macro-F1 of each row of (..., n) label and prediction arrays, over the classes a row
    holds as truth or prediction (sklearn's average): vectorised for scipy's bootstrap."""
    labels, predicted = np.moveaxis(labels, axis, -1), np.moveaxis(predicted, axis, -1)
    batch = labels.shape[:-1]
    labels = labels.reshape(-1, labels.shape[-1]).astype(np.int64)
    predicted = predicted.reshape(-1, predicted.shape[-1]).astype(np.int64)
    rows = len(labels)
    pair = labels * num_classes + predicted + np.arange(rows)[:, None] * num_classes**2
    counts = np.bincount(pair.ravel(), minlength=rows * num_classes**2)
    counts = counts.reshape(rows, num_classes, num_classes)
    tp = np.einsum("sii->si", counts)
    denominator = counts.sum(axis=1) + counts.sum(axis=2)  # predicted + true = 2tp + fp + fn
    present = denominator > 0
    f1 = np.divide(2 * tp, denominator, out=np.zeros(tp.shape), where=present)
    return (f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)).reshape(batch)


def macro_f1_interval(
    labels,
    predicted,
    num_classes: int,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[float, float]:
    """BCa bootstrap interval of macro-F1 over images (scipy.stats.bootstrap, paired), with
    a fixed seed so every trial's interval uses the same resamples. Where every resample
    gives the same value (no errors, or no correct image) no bootstrap can give an
    interval; then macro-F1 takes accuracy's Wilson interval, since at the edges the two
    coincide (1 or 0) and one error moves macro-F1 by about 1/n on balanced classes, as it
    moves accuracy."""
    import warnings

    from scipy.stats import bootstrap

    labels, predicted = np.asarray(labels), np.asarray(predicted)
    if not len(labels):
        return float("nan"), float("nan")
    correct = labels == predicted
    if correct.all() or not correct.any():
        return accuracy_interval(labels, predicted, level)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a degenerate resample set is handled below
        result = bootstrap(
            (labels, predicted),
            lambda a, b, axis=-1: _macro_f1_batch(a, b, num_classes, axis),
            paired=True,
            vectorized=True,
            n_resamples=samples,
            confidence_level=level,
            method="BCa",
            random_state=np.random.default_rng(seed),
        )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (np.isfinite(low) and np.isfinite(high)):
        return accuracy_interval(labels, predicted, level)
    return low, high


def test_summary(labels: np.ndarray, probs: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy (Wilson interval) and macro-F1 (BCa bootstrap interval) of ``probs``."""
    predicted = probs.argmax(1)
    acc_low, acc_high = accuracy_interval(labels, predicted)
    f1_low, f1_high = macro_f1_interval(labels, predicted, num_classes)
    return {
        "acc": accuracy(labels, predicted),
        "acc_low": acc_low,
        "acc_high": acc_high,
        "macro_f1": macro_f1(labels, predicted, num_classes),
        "macro_f1_low": f1_low,
        "macro_f1_high": f1_high,
    }


def per_class_report(labels, predicted, class_names: list[str]) -> dict:
    """Per-class precision, recall, F1 and support, and the confusion matrix (rows: true)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    k = len(class_names)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=list(range(k)), zero_division=0
    )
    return {
        "classes": [
            {
                "class": name,
                "precision": float(p),
                "recall": float(r),
                "f1": float(f),
                "support": int(s),
            }
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
        ],
        "confusion": confusion_matrix(labels, predicted, labels=list(range(k))).tolist(),
    }


@dataclass(frozen=True)
class McNemar:
    """Paired comparison of two classifiers on the same images."""

    only_a: int  # images A got right and B wrong
    only_b: int
    p_value: float
    exact: bool

    def line(self, a: str, b: str, alpha: float = 0.05) -> str:
        verdict = "a real difference" if self.p_value < alpha else "not distinguishable"
        how = "exact binomial" if self.exact else "chi-square, continuity-corrected"
        images = "image" if self.only_a == 1 else "images"
        return (
            f"McNemar {a} vs {b}: {self.only_a} {images} only {a} got right, {self.only_b} "
            f"only {b}; p = {self.p_value:.4g} ({how}) -> {verdict} at {alpha:g}"
        )


def mcnemar(labels, predicted_a, predicted_b, exact_below: int = 25) -> McNemar:
    """McNemar's test on the discordant pairs; exact (two-sided binomial, p = 1/2) when
    they number fewer than ``exact_below``, else chi-square with continuity correction."""
    from scipy.stats import binomtest, chi2

    labels = np.asarray(labels)
    right_a, right_b = np.asarray(predicted_a) == labels, np.asarray(predicted_b) == labels
    b, c = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    if b + c == 0:
        return McNemar(b, c, 1.0, True)
    if b + c < exact_below:
        return McNemar(b, c, float(binomtest(b, b + c, 0.5).pvalue), True)
    statistic = (abs(b - c) - 1) ** 2 / (b + c)
    return McNemar(b, c, float(chi2.sf(statistic, 1)), False)


# ---- ensembles ----


def soft_vote(probs: list[np.ndarray], weights=None) -> np.ndarray:
    """Weighted mean of the members' probabilities."""
    weights = np.ones(len(probs)) if weights is None else np.asarray(weights, dtype=np.float64)
    return np.tensordot(weights / weights.sum(), np.stack(probs), axes=1)


def hard_vote(probs: list[np.ndarray], weights=None) -> np.ndarray:
    """Predicted classes by (weighted) majority of the members' own predictions; a tie goes
    to the tied class with the larger mean probability, then to the lower class index."""
    stacked = np.stack(probs)
    weights = np.ones(len(probs)) if weights is None else np.asarray(weights, dtype=np.float64)
    votes = np.zeros(stacked.shape[1:])
    for member, w in zip(stacked.argmax(2), weights):
        votes[np.arange(len(member)), member] += w
    tied = votes == votes.max(1, keepdims=True)
    return np.where(tied, soft_vote(probs, weights), -1.0).argmax(1)


def log_loss(labels, probs) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1))))


def greedy_selection(
    val_probs: list[np.ndarray], val_labels: np.ndarray, steps: int = 25
) -> np.ndarray:
    """Ensemble selection with replacement (Caruana et al., 2004) on the validation split:
    start empty, at each step add the member (again, if it helps most) whose addition gives
    the best validation accuracy, ties broken by lower log loss then lower index; keep the
    best prefix. Returns each member's count, to use as soft-vote weights."""
    counts = np.zeros(len(val_probs), dtype=np.int64)
    total = np.zeros_like(val_probs[0], dtype=np.float64)
    best_score, best_counts = None, counts.copy()
    for step in range(1, steps + 1):
        scores = []
        for probs in val_probs:
            mean = (total + probs) / step
            scores.append((accuracy(val_labels, mean.argmax(1)), -log_loss(val_labels, mean)))
        pick = max(range(len(val_probs)), key=lambda i: (scores[i], -i))
        counts[pick] += 1
        total += val_probs[pick]
        if best_score is None or scores[pick] > best_score:
            best_score, best_counts = scores[pick], counts.copy()
    return best_counts


@dataclass(frozen=True)
class Stacked:
    val_predicted: np.ndarray  # validation classes predicted out of fold (an honest val_acc)
    test_predicted: np.ndarray
    c: float  # the inverse regularisation strength cross-validation chose
    folds: int


def stacking(
    val_probs: list[np.ndarray], val_labels: np.ndarray, test_probs: list[np.ndarray], seed: int = 0
) -> Stacked | None:
    """A regularised logistic-regression meta-model over the members' probabilities (each
    member's class probabilities side by side), fit on the validation split alone: its
    regularisation is chosen by stratified cross-validation inside validation, the model is
    then fit on all of validation and applied to test once. None when some class has fewer
    than two validation images (no fold could hold it)."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    labels = np.asarray(val_labels)
    folds = min(5, int(np.bincount(labels).min()) if len(labels) else 0)
    if folds < 2 or len(np.unique(labels)) < 2:
        return None
    x_val, x_test = np.concatenate(val_probs, 1), np.concatenate(test_probs, 1)
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    # chosen by log loss (a proper score); scikit-learn 1.9 wants its new defaults stated
    options = {"l1_ratios": (0.0,), "use_legacy_attributes": False}
    known = inspect.signature(LogisticRegressionCV).parameters
    meta = LogisticRegressionCV(
        Cs=10,
        cv=split,
        max_iter=5000,
        scoring="neg_log_loss",
        **{k: v for k, v in options.items() if k in known},
    )
    meta.fit(x_val, labels)
    c = float(np.atleast_1d(meta.C_)[0])
    out_of_fold = cross_val_predict(LogisticRegression(C=c, max_iter=5000), x_val, labels, cv=split)
    return Stacked(out_of_fold, meta.predict(x_test), c, folds)
