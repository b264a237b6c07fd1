import math

import torch

from trainables import metrics as M
from trainables.batches import training_batches
from trainables.config import TrialConfig
from trainables.loop import fit, train_one_epoch
from trainables.models import create_model
from trainables.objectives import create_loss, create_optimizer
from trainables.strategies import backbone_frozen, create_strategy
from tests_support import tiny_trial_data


def _step(cfg, net, strategy, epoch=0):
    """One optimiser step of the real training epoch on a small random batch."""
    data = tiny_trial_data(num_classes=3, image_size=32, n=8)
    optimizer = create_optimizer(cfg, net.parameters())
    strategy.on_epoch_start(net, optimizer, epoch)
    strategy.train_mode(net)
    loader = training_batches(cfg, data, range(len(data.train_rows)), torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return train_one_epoch(net, loader, create_loss(cfg, [1, 1, 1]), optimizer, scaler,
                           torch.device("cpu"), strategy.aux_weight, None)


def test_feature_extractor_freezes_backbone_and_its_batchnorm_stats():
    cfg = TrialConfig.from_dict({"model": "small_cnn", "strategy": "feature_extractor",
                                 "lr": 1e-2, "pretrained": "false"})
    net = create_model("small_cnn", 3, "false").net
    strategy = create_strategy(cfg)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    _step(cfg, net, strategy)
    after = net.state_dict()
    for name, param in net.named_parameters():
        if net.is_head(name):
            assert param.requires_grad and not torch.equal(after[name], before[name])
        else:
            assert not param.requires_grad and param.grad is None
            assert torch.equal(after[name], before[name])
    bn_stats = [k for k in before if "running_mean" in k or "running_var" in k]
    assert bn_stats and all(torch.equal(after[k], before[k]) for k in bn_stats)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)


def test_base_trains_everything_and_updates_batchnorm():
    cfg = TrialConfig.from_dict({"model": "small_cnn", "lr": 1e-2, "pretrained": "false"})
    net = create_model("small_cnn", 3, "false").net
    before = {k: v.clone() for k, v in net.state_dict().items()}
    _step(cfg, net, create_strategy(cfg))
    after = net.state_dict()
    assert not torch.equal(after["body.features.0.weight"], before["body.features.0.weight"])
    assert not torch.equal(after["body.features.1.running_mean"],
                           before["body.features.1.running_mean"])


def test_finetuned_counts_the_aux_loss_and_aux_weight_zero_does_not():
    losses = {}
    for weight in (0.3, 0.0):
        cfg = TrialConfig.from_dict({"strategy": "finetuned", "aux_weight": weight, "lr": 1e-6,
                                     "pretrained": "false"})
        strategy = create_strategy(cfg)
        assert strategy.aux_heads
        torch.manual_seed(0)
        net = create_model("googlenet", 3, "false", aux_heads=True).net
        torch.manual_seed(1)
        losses[weight], _ = _step(cfg, net, strategy)
    # same weights and batch: the aux term adds 0.3 x two positive cross-entropies
    assert losses[0.3] > losses[0.0] + 0.3


def test_gradual_unfreeze_unfreezes_at_the_right_epoch_with_the_right_lr():
    cfg = TrialConfig.from_dict({"model": "small_cnn", "strategy": "gradual_unfreeze",
                                 "unfreeze_epoch": 2, "unfreeze_lr": 1e-5, "lr": 1e-3,
                                 "max_epochs": 4, "pretrained": "false",
                                 "early_stop_patience": 0})
    net = create_model("small_cnn", 3, "false").net
    strategy = create_strategy(cfg)
    seen = []
    original = strategy.on_epoch_start

    def spy(net_, optimizer, epoch):
        original(net_, optimizer, epoch)
        seen.append((epoch, backbone_frozen(net_), optimizer.param_groups[0]["lr"]))

    strategy.on_epoch_start = spy
    reports = []
    fit(cfg, net, strategy, tiny_trial_data(3, 32, 12), torch.device("cpu"),
        lambda metrics, state: reports.append(metrics))
    assert seen == [(0, True, 1e-3), (1, True, 1e-3), (2, False, 1e-5), (3, False, 1e-5)]
    assert [r[M.LR] for r in reports] == [1e-3, 1e-3, 1e-5, 1e-5]
    assert all(math.isfinite(r[M.TRAIN_LOSS]) for r in reports)


def test_early_stopping_waits_for_gradual_unfreeze_to_unfreeze():
    # min_delta so large that no epoch counts as progress: patience 1 would stop at epoch 2,
    # but the frozen phase (3 epochs) must not spend it
    cfg = TrialConfig.from_dict({"model": "small_cnn", "strategy": "gradual_unfreeze",
                                 "unfreeze_epoch": 3, "max_epochs": 10, "pretrained": "false",
                                 "early_stop_patience": 1, "early_stop_min_delta": 100.0})
    reports = []
    fit(cfg, create_model("small_cnn", 3, "false").net, create_strategy(cfg),
        tiny_trial_data(3, 32, 12), torch.device("cpu"), lambda m, s: reports.append(m))
    assert [r[M.EPOCH] for r in reports] == [1, 2, 3, 4]
    assert reports[-1][M.STOP_REASON] == M.EARLY_STOPPING
