"""Calibrated probabilities and prediction sets against hand-made cases."""
from __future__ import annotations

import math

import numpy as np
import pytest

from trainables import calibration as C


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
