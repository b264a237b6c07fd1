"""Statistics and ensembles on small fixed arrays, checked against hand-computed values."""

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score

from trainables.stats import evaluation as E


def test_mcnemar_exact_for_few_discordant_pairs():
    labels = np.zeros(10, dtype=int)
    a = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1])  # right on 8
    b = np.array([0, 0, 1, 1, 1, 1, 1, 1, 0, 1])  # right on 3: b=6 only-A, c=1 only-B
    result = E.mcnemar(labels, a, b)
    assert (result.only_a, result.only_b, result.exact) == (6, 1, True)
    # two-sided binomial, n=7, p=1/2: P(X<=1) + P(X>=6) = 2 * (1 + 7) / 2**7
    assert result.p_value == pytest.approx(16 / 128)
    assert "not distinguishable" in result.line("A", "B")


def test_mcnemar_chi_square_for_many_discordant_pairs():
    labels = np.zeros(100, dtype=int)
    a = np.zeros(100, dtype=int)
    b = np.zeros(100, dtype=int)
    a[:10] = 1  # A wrong on 10 that B gets right: c = 10
    b[10:40] = 1  # B wrong on 30 that A gets right: b = 30
    result = E.mcnemar(labels, a, b)
    assert (result.only_a, result.only_b, result.exact) == (30, 10, False)
    statistic = (abs(30 - 10) - 1) ** 2 / 40  # 9.025
    assert result.p_value == pytest.approx(math.erfc(math.sqrt(statistic / 2)))  # chi2(1) tail
    assert "a real difference" in result.line("A", "B")


def test_mcnemar_of_identical_predictions_is_p_one():
    labels = np.array([0, 1, 2])
    assert E.mcnemar(labels, labels, labels).p_value == 1.0


Z = 1.959963984540054  # the normal quantile of a 95% interval


def _wilson(k: int, n: int) -> tuple[float, float]:
    """The Wilson score interval written out by hand."""
    centre = (k + Z * Z / 2) / (n + Z * Z)
    half = Z / (n + Z * Z) * math.sqrt(k * (n - k) / n + Z * Z / 4)
    return centre - half, centre + half


@pytest.mark.parametrize("correct,n", [(179, 179), (0, 179), (150, 179), (1, 12)])
def test_accuracy_interval_is_wilsons_and_holds_at_the_edges(correct, n):
    labels = np.zeros(n, dtype=int)
    predicted = np.r_[np.zeros(correct, dtype=int), np.ones(n - correct, dtype=int)]
    low, high = E.accuracy_interval(labels, predicted)
    assert (low, high) == pytest.approx(_wilson(correct, n), abs=1e-9)
    if correct == n:  # no errors: not a point; the old percentile bootstrap gave [1, 1]
        assert high == pytest.approx(1) and low == pytest.approx(n / (n + Z * Z)) and low < 0.98
    if correct == 0:
        assert low == pytest.approx(0, abs=1e-12) and high == pytest.approx(Z * Z / (n + Z * Z))


def test_macro_f1_interval_is_scipys_bca_over_sklearns_f1():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 40)
    predicted = np.where(rng.random(40) < 0.7, labels, rng.integers(0, 4, 40))
    low, high = E.macro_f1_interval(labels, predicted, 4, samples=300, seed=5)
    # the same bootstrap over a plain (not vectorised) statistic: sklearn's own macro-F1
    plain = bootstrap(
        (labels, predicted),
        lambda a, b: f1_score(a, b, average="macro", zero_division=0),
        paired=True,
        vectorized=False,
        n_resamples=300,
        method="BCa",
        random_state=np.random.default_rng(5),
    )
    assert (low, high) == pytest.approx(
        (plain.confidence_interval.low, plain.confidence_interval.high)
    )
    assert low < E.macro_f1(labels, predicted, 4) < high


def test_a_perfect_classifier_gets_an_interval_not_a_point():
    labels = np.array([0, 1, 2, 0, 1, 2])
    probs = np.eye(3)[labels] * 0.9 + 0.1 / 3
    summary = E.test_summary(labels, probs, 3)
    low = 6 / (6 + Z * Z)  # Wilson with no errors in 6 images: 0.61
    assert summary == pytest.approx(
        {
            "acc": 1.0,
            "acc_low": low,
            "acc_high": 1.0,
            "macro_f1": 1.0,
            "macro_f1_low": low,
            "macro_f1_high": 1.0,
        }
    )
    wrong = E.test_summary(labels, np.roll(probs, 1, axis=1), 3)
    assert wrong["acc"] == 0 and wrong["acc_low"] == pytest.approx(0, abs=1e-12)
    assert wrong["macro_f1_high"] == wrong["acc_high"] == pytest.approx(Z * Z / (6 + Z * Z))


def test_per_class_report_by_hand():
    labels = np.array([0, 0, 1, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 0, 0])
    report = E.per_class_report(labels, predicted, ["a", "b", "c"])
    assert report["confusion"] == [[1, 1, 0], [1, 2, 0], [1, 0, 0]]
    a, b, c = report["classes"]
    assert (a["precision"], a["recall"], a["support"]) == (pytest.approx(1 / 3), 0.5, 2)
    assert (b["precision"], b["recall"], b["f1"]) == (
        pytest.approx(2 / 3),
        pytest.approx(2 / 3),
        pytest.approx(2 / 3),
    )
    assert (c["precision"], c["recall"], c["f1"], c["class"]) == (0, 0, 0, "c")


def test_soft_and_hard_votes_by_hand():
    m1 = np.array([[0.6, 0.4], [0.2, 0.8], [0.55, 0.45]])
    m2 = np.array([[0.1, 0.9], [0.3, 0.7], [0.6, 0.4]])
    m3 = np.array([[0.7, 0.3], [0.9, 0.1], [0.1, 0.9]])
    soft = E.soft_vote([m1, m2, m3])
    assert soft == pytest.approx(np.array([[1.4, 1.6], [1.4, 1.6], [1.25, 1.75]]) / 3)
    # votes: row 0: 0,1,0 -> 0; row 1: 1,1,0 -> 1; row 2: 0,0,1 -> 0 (soft vote says 1)
    assert E.hard_vote([m1, m2, m3]).tolist() == [0, 1, 0]
    weighted = E.soft_vote([m1, m3], [3, 1])
    assert weighted[0] == pytest.approx([(3 * 0.6 + 0.7) / 4, (3 * 0.4 + 0.3) / 4])
    # two members that disagree everywhere: every row ties, the soft vote decides
    assert E.hard_vote([m1, m3]).tolist() == [0, 0, 1]


def test_greedy_selection_finds_the_complementary_pair():
    labels = np.array([0, 0, 1, 1])
    # a is sure and right on the first half, unsure-wrong on the second; b the reverse;
    # c is a weak all-rounder that beats each of them alone (3/4) but not the pair (4/4)
    a = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    b = np.array([[0.4, 0.6], [0.4, 0.6], [0.1, 0.9], [0.1, 0.9]])
    c = np.array([[0.6, 0.4], [0.6, 0.4], [0.4, 0.6], [0.6, 0.4]])
    # alone: a 2/4, b 2/4, c 3/4 -> step 1 takes c. Step 2: c+a 2/4 (row 2 ties, goes to
    # class 0), c+b 4/4, c+c 3/4 -> b. Step 3: +a and +c both stay 4/4; log loss 0.485 for
    # a+b+c against 0.546 for 2c+b -> a, and 0.485 beats step 2's 0.526, so it is kept.
    assert E.greedy_selection([a, b, c], labels, steps=1).tolist() == [0, 0, 1]
    assert E.greedy_selection([a, b, c], labels, steps=2).tolist() == [0, 1, 1]
    assert E.greedy_selection([a, b, c], labels, steps=3).tolist() == [1, 1, 1]
    counts = E.greedy_selection([a, b, c], labels, steps=30)
    mean = E.soft_vote([a, b, c], counts)
    assert E.accuracy(labels, mean.argmax(1)) == 1.0
    assert E.log_loss(labels, mean) <= E.log_loss(labels, E.soft_vote([a, b, c])) + 1e-12


def test_stacking_learns_what_voting_cannot():
    """Member a is always confidently wrong (its probabilities inverted: informative, but
    only to a model that learns to turn them round); member b is right 60% of the time,
    barely. The soft vote follows a and is always wrong; stacking's logistic regression,
    fit on validation alone, turns a round and is always right on test."""
    rng = np.random.default_rng(0)

    def members(labels):
        inverted = np.where(labels == 0, 0.3, 0.7) + rng.uniform(-0.05, 0.05, len(labels))
        right = rng.random(len(labels)) < 0.6
        weak = np.where((labels == 0) == right, 0.55, 0.45)
        return [np.stack([inverted, 1 - inverted], 1), np.stack([weak, 1 - weak], 1)]

    val_labels, test_labels = np.repeat([0, 1], 20), np.repeat([0, 1], 20)
    val, test = members(val_labels), members(test_labels)
    assert E.accuracy(test_labels, E.soft_vote(test).argmax(1)) == 0.0
    assert E.accuracy(test_labels, E.hard_vote(test)) < 0.5
    stacked = E.stacking(val, val_labels, test)
    assert stacked is not None and stacked.folds == 5
    assert E.accuracy(test_labels, stacked.test_predicted) == 1.0
    assert E.accuracy(val_labels, stacked.val_predicted) >= 0.95  # out of fold
    # a class with one validation image: no fold can hold it, so no stacking
    assert E.stacking(val, np.r_[0, np.ones(39, int)], test) is None
