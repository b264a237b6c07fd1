"""Calibrated probabilities and prediction sets against hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainables.stats import calibration as C


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_temperature_scaling_undoes_a_known_overconfidence():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, (20000, 5))
    # labels drawn from softmax(z): softmax(z) is calibrated; softmax(3z) is overconfident
    labels = np.array([rng.choice(5, p=p) for p in _softmax(z)])
    sharp = _softmax(3 * z)
    temperature = C.fit_temperature(sharp, labels)
    assert temperature == pytest.approx(3.0, rel=0.05)
    assert C.ece(C.scaled(sharp, temperature), labels) < 0.02 < C.ece(sharp, labels)
    assert np.array_equal(C.scaled(sharp, temperature).argmax(1), sharp.argmax(1))


def test_ece_by_hand():
    # two bins used: confidence 0.9 (2 images, 1 right) and 0.6 (2 images, 2 right)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    assert C.ece(probs, labels) == pytest.approx(0.5 * abs(0.5 - 0.9) + 0.5 * abs(1 - 0.6))


def test_conformal_threshold_by_hand():
    scores = [0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6]  # n = 9
    # coverage 0.8: the ceil(10 x 0.8) = 8th smallest score
    assert C.threshold(scores, 0.8) == pytest.approx(0.8)
    assert C.threshold(scores, 0.95) == 1.0  # ceil(9.5) = 10 > n: every class
    probs = np.array([[0.5, 0.3, 0.2], [0.15, 0.85, 0.0]])
    # threshold 0.7: classes with probability at least 0.3
    assert C.sets(probs, 0.7).tolist() == [[True, True, False], [False, True, False]]


@pytest.mark.parametrize("coverage", [0.8, 0.9, 0.95])
def test_prediction_sets_cover_at_their_level_on_exchangeable_data(coverage):
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.2, (6000, 6))
    labels = np.array([rng.choice(6, p=p) for p in _softmax(z)])
    probs = _softmax(2 * z)
    cut = C.threshold(C.scores(probs[:3000], labels[:3000]), coverage)
    chosen = C.sets(probs[3000:], cut)
    covered = chosen[np.arange(3000), labels[3000:]].mean()
    # split conformal: at least the level, and (with continuous scores) not far above it
    assert coverage - 0.02 <= covered <= coverage + 0.03
    assert chosen.sum(1).mean() < 6
    assert math.isfinite(cut)


def test_mondrian_sets_cover_every_class_at_the_level():
    """A model sure of class 0 and unsure of class 2: sets calibrated over all images cover
    class 2 well below the level; calibrated per class (Mondrian), each class is covered at
    the level, with larger sets where the model is unsure."""
    rng = np.random.default_rng(2)
    n, coverage = 9000, 0.9
    labels = rng.integers(0, 3, n)
    sharpness = np.array([4.0, 2.0, 0.4])[labels]  # how clearly each image shows its class
    z = rng.normal(0, 1, (n, 3))
    z[np.arange(n), labels] += sharpness
    probs = _softmax(z)
    half = n // 2
    marginal = C.sets(probs[half:], C.threshold(C.scores(probs[:half], labels[:half]), coverage))
    per_class = C.class_scores(probs[:half], labels[:half], 3)
    assert [len(s) for s in per_class] == np.bincount(labels[:half], minlength=3).tolist()
    cut = C.cutoffs({"class_scores": per_class}, coverage, per_class=True)
    mondrian = C.sets(probs[half:], cut)
    test = labels[half:]

    def covered(chosen, k):
        rows = test == k
        return chosen[rows, k].mean()

    assert covered(marginal, 2) < coverage - 0.05  # the unsure class, short-changed
    for k in range(3):
        assert coverage - 0.03 <= covered(mondrian, k) <= coverage + 0.04, k
    with pytest.raises(ValueError, match="no per-class calibration"):
        C.cutoffs({"scores": [0.1]}, coverage, per_class=True)


def test_the_reports_set_table_states_coverage_per_level_and_class():
    from sweeps.analysis.sections import set_coverage

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 6000)
    z = rng.normal(0, 1, (6000, 3))
    z[np.arange(6000), labels] += np.array([4.0, 2.0, 0.4])[labels]
    probs = _softmax(z)
    table = set_coverage(
        probs[:3000], labels[:3000], probs[3000:], labels[3000:], ["a", "b", "c"]
    ).set_index(["level", "calibrated over"])
    assert len(table) == 6 and (table["mean set size"] > 0.5).all()
    for level in (0.8, 0.9, 0.95):
        assert table.loc[(level, "all classes"), "coverage"] == pytest.approx(level, abs=0.03)
        mondrian = table.loc[(level, "per class")]
        assert all(mondrian[f"coverage: {c}"] >= level - 0.04 for c in "abc")
    assert table.loc[(0.9, "all classes"), "coverage: c"] < 0.85  # the unsure class
