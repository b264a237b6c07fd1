"""A trial's numbers, pinned: the per-epoch losses of one small trial, built and fit as every
sweep's trial is (build_trial, the one loop, with augmentation, dropout, test scoring,
calibration and TTA each epoch), on one thread, against values recorded from this code.
Anything that changes what training draws (a statistic or a check that consumes the
training's random stream, a changed default) fails here, so that a change to every trial's
trajectory is seen in CI and made on purpose: then record the new values below and say why
in the commit."""

from __future__ import annotations

import pytest
import torch

from tests_support import fit_trial

# (epoch, train_loss, val_loss), recorded with torch 2.14.1 on CPU, one thread
RECORDED = [
    (1, 0.642471710840861, 0.052689533680677414),
    (2, 0.1701364517211914, 0.0019213692285120487),
    (3, 0.05728186170260111, 0.002093214076012373),
    (4, 0.03633040438095728, 7.051915599731728e-05),
]


def test_a_small_trials_per_epoch_losses_are_the_recorded_ones(colour_handle):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fitted = fit_trial(
            colour_handle,
            {
                "max_epochs": 4,
                "early_stop_patience": 0,
                "chance_epochs": 0,
                "tta": True,
                "head_dropout": 0.3,
                "head_hidden": 16,
            },
        )
    finally:
        torch.set_num_threads(threads)
    got = [(r["epoch"], r["train_loss"], r["val_loss"]) for r in fitted.reports]
    assert [g[0] for g in got] == [r[0] for r in RECORDED]
    # Another CPU's kernels round differently: on an AMD EPYC these values (recorded on
    # the machine of an earlier session) came back apart by up to 1.1e-3 (train, growing
    # epoch by epoch to that at epoch 4) and 1.3e-3 (val, whose values are small),
    # relative. A changed random stream moves them by far more: reseeding the
    # augmentation's generator moved epoch 1's train loss by 10% and its val loss by
    # half. The tolerances sit between the two.
    for (_, train, val), (epoch, train_then, val_then) in zip(got, RECORDED):
        assert train == pytest.approx(train_then, rel=5e-3), epoch
        assert val == pytest.approx(val_then, rel=2e-2, abs=1e-6), epoch
