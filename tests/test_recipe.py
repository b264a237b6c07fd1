"""Recipe settings of the loop: warm-up epochs before the schedule, and the weights'
moving average (timm's ModelEmaV3) as what is scored, kept as best and exported."""

import pytest
import torch

from tests_support import CPU, fit_trial
from trainables.core import metrics as M
from trainables.data.batches import Normalize
from trainables.trial.loop import evaluate

pytestmark = pytest.mark.integration


def test_warmup_raises_the_learning_rate_linearly_before_the_schedule_starts(colour_handle):
    cfg = {"max_epochs": 5, "early_stop_patience": 0, "chance_epochs": 0, "lr": 3e-3}
    warm = fit_trial(
        colour_handle,
        {**cfg, "warmup_epochs": 2, "scheduler": "step", "step_size": 2, "step_gamma": 0.1},
    )
    lrs = [r[M.LR] for r in warm.reports]
    # 1/3, 2/3, then the full rate; StepLR counts its 2 epochs from there
    assert lrs == pytest.approx([1e-3, 2e-3, 3e-3, 3e-3, 3e-4])
    plain = fit_trial(colour_handle, {**cfg, "scheduler": "step", "step_size": 2})
    assert [r[M.LR] for r in plain.reports] == pytest.approx([3e-3, 3e-3, 3e-4, 3e-4, 3e-5])


def test_a_resumed_warmup_goes_on_where_it_stopped(colour_handle, tmp_path):
    from trainables.trial import checkpoint

    cfg = {"max_epochs": 4, "early_stop_patience": 0, "chance_epochs": 0, "lr": 3e-3}
    cfg.update(warmup_epochs=3, scheduler="none")
    whole = fit_trial(colour_handle, cfg, checkpoints=tmp_path)
    resumed = fit_trial(colour_handle, cfg, resume=checkpoint.load(tmp_path / "epoch_2"))
    assert [r[M.LR] for r in resumed.reports] == [r[M.LR] for r in whole.reports][2:]


def test_the_moving_average_is_what_is_scored_and_kept(colour_handle):
    cfg = {"max_epochs": 4, "early_stop_patience": 0, "chance_epochs": 0, "ema_decay": 0.9}
    fitted = fit_trial(colour_handle, cfg)
    fitted_states = fitted.state
    assert "ema" in fitted_states
    best = fitted_states["fit"].best_weights
    trained = fitted_states["model"]
    averaged = {k.removeprefix("module."): v for k, v in fitted_states["ema"].items()}
    assert fitted.last[M.BEST_EPOCH] == fitted.last[M.EPOCH]  # still improving at the end
    for name, tensor in best.items():  # so the best weights are the last average
        assert torch.equal(tensor, averaged[name]), name
    assert any(not torch.equal(best[n], trained[n]) for n in best if best[n].is_floating_point())
    # the best weights, loaded into the network, give the best validation loss reported
    net = fitted.trial.net
    net.load_state_dict(best)
    data = fitted.trial.data
    pre = data.preprocess
    loss, _, _ = evaluate(net, data.val, Normalize(pre.mean, pre.std), 8, CPU)
    assert loss == pytest.approx(fitted.last[M.BEST_VAL_LOSS], abs=1e-5)
    without = fit_trial(colour_handle, {**cfg, "ema_decay": 0.0})
    assert "ema" not in without.state
    assert [r[M.VAL_LOSS] for r in without.reports] != [r[M.VAL_LOSS] for r in fitted.reports]
