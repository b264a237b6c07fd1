"""The report's insight numbers against cases worked out by hand or by the library itself:
FLOPs of known layers, parameters and megabytes, importance where one setting alone decides
the score, the Pareto front, the hardest images, latency that tells a big model from a
small one."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from sweeps.analysis import insight
from sweeps.experiment.folder import Experiment
from trainables.core import metrics as M
from trainables.model import costs


class Tuple(nn.Module):
    """As Net does: the forward returns (logits, aux)."""

    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(x), []


def test_flops_params_and_megabytes_of_known_layers():
    net = Tuple(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.Flatten(),
            nn.Linear(8 * 16 * 16, 5),
        )
    )
    # convolution: 16x16 outputs x 8 channels x (3x3x3) multiply-adds; linear: 2048 x 5;
    # a multiply-add is two operations (BatchNorm adds none in torch's count)
    assert costs.flops_per_image(net, 16) == 2 * (16 * 16 * 8 * 27) + 2 * (2048 * 5)
    weights = net.state_dict()
    params = (8 * 27 + 8) + (8 + 8) + (2048 * 5 + 5)  # conv, BN weight and bias, linear
    assert costs.parameter_count(weights) == params
    buffers = 8 + 8 + 1  # BN's running mean and variance, and its int64 batch count
    assert costs.weights_mb(weights) == pytest.approx((params + buffers - 1) * 4e-6 + 8e-6)
    assert net.training  # flops are counted in eval mode and the mode is given back


def _experiment(table: pd.DataFrame, varied: tuple[str, ...], **kwargs) -> Experiment:
    n = kwargs.pop("test", 0)
    return Experiment(
        Path("."),
        table,
        np.array([]),
        np.array([f"img{i}" for i in range(n)]),
        np.array([]),
        kwargs.pop("labels", np.zeros(n, int)),
        kwargs.pop("classes", ["a", "b"]),
        varied=varied,
    )


def test_importance_finds_the_one_setting_that_decides_the_score():
    rng = np.random.default_rng(0)
    lrs = np.exp(rng.uniform(np.log(1e-5), np.log(1e-1), 40))
    table = pd.DataFrame(
        {
            "trial_id": [f"t{i}" for i in range(40)],
            "variant": "m",
            "stop_reason": "completed",
            "lr": lrs,
            "batch_size": rng.choice([16, 32, 64], 40),
            "optimizer": rng.choice(["adam", "sgd"], 40),
            # the score depends on the learning rate alone (its distance from 1e-3, in decades)
            M.BEST_VAL_LOSS: np.abs(np.log10(lrs) + 3),
        }
    )
    found = insight.importance(_experiment(table, ("lr", "batch_size", "optimizer")))
    assert list(found.table.columns) == ["fANOVA", "PED-ANOVA"]
    assert found.table.index[0] == "lr"
    assert found.table.loc["lr", "fANOVA"] > 0.9 and found.table.loc["lr", "PED-ANOVA"] > 0.8
    assert found.table.sum().round(6).tolist() == [1.0, 1.0]
    few = insight.importance(_experiment(table.head(3), ("lr",)))
    assert few.table.empty and "not computed: 3 trials" in few.note


def test_pareto_front_by_hand():
    # (cost, score): b beats a (cheaper, better); c is dearer but better; d is beaten by c
    assert costs.pareto_front([2, 1, 3, 4], [0.8, 0.9, 0.95, 0.94]) == [False, True, True, False]
    assert costs.pareto_front([1, 1], [0.5, 0.5]) == [True, True]  # equal points both stay


def test_the_hardest_images_are_those_most_trials_get_wrong():
    labels = np.array([0, 1, 1, 0])
    experiment = _experiment(pd.DataFrame(), (), test=4, labels=labels)

    def probs(predicted, confidence=0.8):
        p = np.full((4, 2), 1 - confidence)
        p[np.arange(4), predicted] = confidence
        return p

    trials = {"x": probs([0, 0, 1, 1]), "y": probs([1, 0, 1, 0]), "z": probs([0, 0, 0, 0], 0.6)}
    hard = insight.hardest(experiment, trials, count=5)
    # image 1 (label b): all three call it a. One trial each gets 0, 2 and 3 wrong; ties go
    # to the lower mean probability of the true class: image 0 (.8 + .2 + .6)/3 = .533 and
    # image 3 (.2 + .8 + .6)/3 = .533 (then by position) before image 2 (.8 + .8 + .4)/3
    assert [(h.path, h.wrong, h.mistaken_for) for h in hard] == [
        ("img1", 3, "a"),
        ("img0", 1, "b"),
        ("img3", 1, "b"),
        ("img2", 1, "a"),
    ]
    assert hard[0].trials == 3 and hard[0].label == "b"


def test_latency_tells_a_big_model_from_a_small_one():
    small = Tuple(nn.Linear(3 * 16 * 16, 2)).eval()
    big = Tuple(
        nn.Sequential(*[nn.Conv2d(3 if i == 0 else 64, 64, 3, padding=1) for i in range(6)])
    ).eval()

    class Flat(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.flatten(1))

    measured = costs.measure_latency(
        {"small": (Flat(small), 16), "big": (big, 16)},
        batches=(1, 4),
        rounds=3,
        repeats=2,
        threads=1,
    )
    assert measured["small"][1].rounds == 3 and measured["big"][4].batch == 4
    assert measured["big"][1].median_ms > 10 * measured["small"][1].median_ms
    assert torch.get_num_threads() >= 1  # the caller's thread count is given back
