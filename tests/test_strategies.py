"""Fine-tuning strategies on real modules, through trials built as every trial is."""

import math

import torch

from tests_support import fit_trial
from trainables.core import metrics as M
from trainables.recipe.strategies import backbone_frozen


def _state(net) -> dict:
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_feature_extractor_freezes_backbone_and_its_batchnorm_stats(colour_handle):
    before = {}
    fitted = fit_trial(
        colour_handle,
        {"strategy": "feature_extractor", "lr": 1e-2, "max_epochs": 1},
        wrap=lambda net: before.update(_state(net)) or net,
    )
    net = fitted.trial.net
    after = net.state_dict()
    for name, param in net.named_parameters():
        if net.is_head(name):
            assert param.requires_grad and not torch.equal(after[name], before[name])
        else:
            assert not param.requires_grad and param.grad is None
            assert torch.equal(after[name], before[name])
    bn_stats = [k for k in before if "running_mean" in k or "running_var" in k]
    assert bn_stats and all(torch.equal(after[k], before[k]) for k in bn_stats)
    fitted.trial.strategy.train_mode(net)  # as the loop leaves it for training
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)


def test_base_trains_everything_and_updates_batchnorm(colour_handle):
    before = {}
    fitted = fit_trial(
        colour_handle,
        {"lr": 1e-2, "max_epochs": 1},
        wrap=lambda net: before.update(_state(net)) or net,
    )
    after = fitted.trial.net.state_dict()
    assert not torch.equal(after["body.features.0.weight"], before["body.features.0.weight"])
    assert not torch.equal(
        after["body.features.1.running_mean"], before["body.features.1.running_mean"]
    )


def test_finetuned_counts_the_aux_loss_and_aux_weight_zero_does_not(colour_handle):
    losses = {}
    for weight in (0.3, 0.0):
        fitted = fit_trial(
            colour_handle,
            {
                "model": "googlenet",
                "strategy": "finetuned",
                "aux_weight": weight,
                "lr": 1e-9,
                "max_epochs": 1,
                "augment": "none",
            },
        )
        assert fitted.trial.strategy.aux_heads and fitted.trial.record.model.aux_heads
        losses[weight] = fitted.last[M.TRAIN_LOSS]
    # same weights and batches: the aux term adds 0.3 x two positive cross-entropies
    assert losses[0.3] > losses[0.0] + 0.3


def test_gradual_unfreeze_unfreezes_at_the_right_epoch_with_the_right_lr(colour_handle):
    seen = []
    fitted = fit_trial(
        colour_handle,
        {
            "strategy": "gradual_unfreeze",
            "unfreeze_epoch": 2,
            "unfreeze_lr": 1e-5,
            "lr": 1e-3,
            "max_epochs": 4,
            "early_stop_patience": 0,
        },
        hook=lambda net, optimizer, epoch: seen.append(
            (epoch, backbone_frozen(net), optimizer.param_groups[0]["lr"])
        ),
    )
    assert seen == [(0, True, 1e-3), (1, True, 1e-3), (2, False, 1e-5), (3, False, 1e-5)]
    assert [r[M.LR] for r in fitted.reports] == [1e-3, 1e-3, 1e-5, 1e-5]
    assert all(math.isfinite(r[M.TRAIN_LOSS]) for r in fitted.reports)


def test_early_stopping_waits_for_gradual_unfreeze_to_unfreeze(colour_handle):
    # min_delta so large that no epoch counts as progress: patience 1 would stop at epoch 2,
    # but the frozen phase (3 epochs) must not spend it
    fitted = fit_trial(
        colour_handle,
        {
            "strategy": "gradual_unfreeze",
            "unfreeze_epoch": 3,
            "max_epochs": 10,
            "early_stop_patience": 1,
            "early_stop_min_delta": 100.0,
            "chance_epochs": 0,
        },
    )
    assert [r[M.EPOCH] for r in fitted.reports] == [1, 2, 3, 4]
    assert fitted.last[M.STOP_REASON] == M.EARLY_STOPPING


def test_lp_ft_fine_tunes_without_the_networks_own_dropout():
    # MobileNetV2's classifier keeps torchvision's Dropout(0.2) in front of the new head: the
    # probe fitted the head without it, so lp_ft's fine-tuning epochs keep it off (the
    # fine-tuning starts from the function the probe fitted); base trains with it
    from trainables.core.config import TrialConfig
    from trainables.model.factory import create_model
    from trainables.recipe.strategies import create_strategy

    net = create_model("mobilenet_v2", 4, pretrained="false").net
    dropouts = [m for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts
    for strategy, on in (("lp_ft", False), ("base", True)):
        chosen = create_strategy(TrialConfig.from_dict({"strategy": strategy, "augment": "none"}))
        chosen.on_epoch_start(net, None, 1)
        chosen.train_mode(net)
        assert all(m.training is on for m in dropouts), strategy
        assert not backbone_frozen(net)
        bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert all(m.training for m in bns)  # batchnorm=train: only the dropout is off


def test_lp_ft_fine_tunes_from_the_probes_function_with_every_stage_standardised(colour_handle):
    # taps=stages standardises the head's features: the probe fits those statistics on all
    # its training data, and lp_ft's fine-tuning keeps them (with BatchNorm and dropout
    # held too) instead of switching to each batch's own, so at a learning rate at which
    # nothing learns the fine-tuning epochs are the probe's function: validation loss
    # unchanged, training loss the probe's (up to the mean over batches against one batch)
    from trainables.model.nets import Standardize

    counts = []  # the batches each standardisation has accumulated, before each epoch
    fitted = fit_trial(
        colour_handle,
        {
            "strategy": "lp_ft",
            "taps": "stages",
            "batchnorm": "eval",
            "weight_decay": 1.0,  # a probe that is not perfect, so its loss tells
            "lr": 1e-12,
            "max_epochs": 3,
            "augment": "none",
            "early_stop_patience": 0,
            "chance_epochs": 0,
        },
        hook=lambda net, optimizer, epoch: counts.append(
            [int(m.batches) for m in net.modules() if isinstance(m, Standardize)]
        ),
    )
    probe, *tuned = fitted.reports
    assert len(tuned) == 2
    for report in tuned:
        assert math.isclose(report[M.VAL_LOSS], probe[M.VAL_LOSS], rel_tol=1e-5)
        assert math.isclose(report[M.TRAIN_LOSS], probe[M.TRAIN_LOSS], rel_tol=0.05)
    # the probe's fit accumulated them (its full batch, once per L-BFGS evaluation); the
    # fine-tuning epochs left them as they were
    assert counts[0] == [0] and counts[1][0] > 0 and counts[1] == counts[2]
