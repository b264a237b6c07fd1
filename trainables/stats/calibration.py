"""Calibrated probabilities and prediction sets, from a trial's validation probabilities.

Temperature scaling (Guo et al., 2017): one number T, fit on the validation split by
minimising the negative log-likelihood of softmax(log p / T) (scipy's bounded scalar
minimiser over log T, within [e^-4, e^4]: a network at chance, whose best temperature is
infinite, gets e^4 = 54.6); T > 1 softens an over-confident network. It changes no
prediction, only how sure each one claims to be. The expected calibration error (ECE: the
support-weighted gap between confidence and accuracy over 15 equal-width confidence bins)
is measured on the test split before and after. It is written here (a dozen lines):
scikit-learn's calibration_curve is binary only and no library of this project's stack
computes the multi-class ECE.

Prediction sets: split conformal prediction with the LAC score (1 - the probability of the
true class), calibrated on the validation split. For coverage 1 - alpha, the threshold is
the ceil((n + 1)(1 - alpha))-th smallest of the n validation scores, and a set holds every
class whose probability is at least 1 - threshold: on exchangeable data it holds the true
class with probability at least 1 - alpha. LAC gives the smallest sets on average of the
usual scores (Sadinle et al., 2019); APS adapts their size to each image but is larger,
and a grower or an inspector wants the short list.

The coverage of those sets is over all images, not per class: a class the model rarely puts
high is covered less often than the level. Mondrian (class-conditional) sets calibrate one
threshold per class, on the validation images of that class only, and cover each class at
the level (Vovk et al., 2005; Sadinle et al., 2019, "class-specific" LAC), at the price of
larger sets; a class with fewer than 1 / (1 - level) - 1 validation images is always in the
sets. The thresholds are the same order statistic as above: a few lines, written here
(MAPIE has them, but for its own estimator wrappers, not for saved probabilities).
"""

from __future__ import annotations

import math

import numpy as np

ECE_BINS = 15


def _log(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0))


def scaled(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the probabilities at temperature T (T = 1 gives them back)."""
    z = _log(probs) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# fewer validation images than this, or none of them wrong, and a temperature is not fit
MIN_CALIBRATION_IMAGES = 20


def calibration_skipped(probs: np.ndarray, labels: np.ndarray) -> str | None:
    """Why no temperature can be fit on these validation predictions, or None. With no
    error among them the likelihood only grows as the temperature falls, so the fit would
    run to the search's bound and make every probability one-hot; on a handful of images it
    would fit their noise."""
    labels = np.asarray(labels)
    if len(labels) < MIN_CALIBRATION_IMAGES:
        return f"{len(labels)} validation images (fewer than {MIN_CALIBRATION_IMAGES})"
    if not (np.asarray(probs).argmax(1) != labels).any():
        return f"none of the {len(labels)} validation images is predicted wrong"
    return None


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the validation negative log-likelihood; 1 (no
    scaling) where ``calibration_skipped`` says the data cannot support one."""
    from scipy.optimize import minimize_scalar

    from trainables.stats.evaluation import log_loss

    labels = np.asarray(labels)
    if calibration_skipped(probs, labels):
        return 1.0

    def nll(log_t: float) -> float:
        return log_loss(labels, scaled(probs, math.exp(log_t)))

    found = minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded", options={"xatol": 1e-4})
    return float(math.exp(found.x))


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS):
    """Per non-empty confidence bin: (mean confidence, accuracy, count), for a reliability
    diagram and the ECE."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    confidence, correct = probs.max(1), (probs.argmax(1) == labels)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return [
        (
            float(confidence[which == b].mean()),
            float(correct[which == b].mean()),
            int((which == b).sum()),
        )
        for b in range(bins)
        if (which == b).any()
    ]


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top-class confidence: the support-weighted gap
    between accuracy and confidence over the reliability diagram's bins."""
    if not len(labels):
        return float("nan")
    return float(
        sum(
            count * abs(accuracy - confidence)
            for confidence, accuracy, count in reliability(probs, labels, bins)
        )
        / len(labels)
    )


def scores(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """LAC nonconformity scores: 1 - the probability of the true class."""
    return 1.0 - np.asarray(probs)[np.arange(len(labels)), np.asarray(labels)]


def threshold(calibration_scores, coverage: float) -> float:
    """The split-conformal threshold for ``coverage`` from n calibration scores."""
    values = np.sort(np.asarray(calibration_scores, dtype=np.float64))
    n = len(values)
    rank = math.ceil((n + 1) * coverage)
    if n == 0 or rank > n:  # too few calibration images for this coverage: every class
        return 1.0
    return float(values[rank - 1])


def sets(probs: np.ndarray, cutoff) -> np.ndarray:
    """Boolean (N, classes): the classes in each image's prediction set (``cutoff``: one
    threshold, or one per class)."""
    return np.asarray(probs) >= 1.0 - np.asarray(cutoff) - 1e-12


def class_scores(probs: np.ndarray, labels: np.ndarray, classes: int) -> list[list[float]]:
    """Each class's LAC scores, from the calibration images of that class only."""
    values, labels = scores(probs, labels), np.asarray(labels)
    return [np.sort(values[labels == k]).tolist() for k in range(classes)]


def cutoffs(calibration: dict, coverage: float, per_class: bool = False):
    """The set threshold an export's calibration gives at ``coverage``: one for every class,
    or (``per_class``, Mondrian) each class's own. ValueError when the export lacks them."""
    key = "class_scores" if per_class else "scores"
    if not calibration.get(key):
        raise ValueError(
            f"this export has no {'per-class ' if per_class else ''}calibration "
            "for prediction sets; re-export the trial"
        )
    if per_class:
        return np.array([threshold(s, coverage) for s in calibration[key]])
    return threshold(calibration[key], coverage)


def calibrate(val_probs, val_labels, test_probs, test_labels) -> dict:
    """What a trial records: its temperature, and the test ECE before and after."""
    temperature = fit_temperature(val_probs, val_labels)
    return {
        "temperature": temperature,
        "ece": ece(test_probs, test_labels),
        "ece_calibrated": ece(scaled(test_probs, temperature), test_labels),
    }
