"""The training loop, through trials built as every trial is (``build_trial``) on real image
files: learning, the best checkpoint, early stopping, divergence, out of memory, resume."""

import math

import numpy as np
import pytest
import torch

from tests_support import CPU, fit_trial, tiny_trial_data
from trainables.core import metrics as M
from trainables.core.config import TrialConfig
from trainables.trial import checkpoint

pytestmark = pytest.mark.integration


def test_fit_learns_and_reports_every_epoch(colour_handle):
    reports = fit_trial(colour_handle, {"max_epochs": 6, "early_stop_patience": 0}).reports
    assert [r[M.EPOCH] for r in reports] == [1, 2, 3, 4, 5, 6]
    assert reports[-1][M.STOP_REASON] == M.COMPLETED
    assert all(r[M.STOP_REASON] == "" for r in reports[:-1])
    assert reports[-1][M.TRAIN_LOSS] < reports[0][M.TRAIN_LOSS]
    assert reports[-1][M.BEST_VAL_ACC] >= 0.9  # chance is 1/3
    assert reports[-1][M.TEST_ACC] >= 0.9
    for key in (M.VAL_LOSS, M.VAL_ACC, M.TRAIN_ACC, M.LR, M.EPOCH_TIME, M.TEST_MACRO_F1):
        assert math.isfinite(reports[-1][key])


def test_best_checkpoint_is_the_lowest_val_loss(colour_handle):
    fitted = fit_trial(colour_handle, {"max_epochs": 5, "early_stop_patience": 0})
    reports, state = fitted.reports, fitted.state
    best = min(reports, key=lambda r: r[M.VAL_LOSS])
    last = reports[-1]
    assert last[M.BEST_EPOCH] == best[M.EPOCH]
    assert last[M.BEST_VAL_LOSS] == best[M.VAL_LOSS]
    predictions = state["fit"].predictions
    assert predictions["test_probs"].shape == (len(colour_handle.indices("test")), 3)
    assert np.allclose(predictions["test_probs"].sum(1), 1.0, atol=1e-5)
    acc = (predictions["test_probs"].argmax(1) == predictions["test_labels"]).mean()
    assert acc == last[M.TEST_ACC]


def test_early_stopping_ends_a_trial_that_stops_improving(colour_handle):
    # a learning rate too small to move the loss by min_delta: patience runs out
    reports = fit_trial(
        colour_handle,
        {
            "max_epochs": 20,
            "lr": 1e-9,
            "early_stop_patience": 2,
            "early_stop_min_delta": 0.01,
            "chance_epochs": 0,
        },
    ).reports
    assert reports[-1][M.STOP_REASON] == M.EARLY_STOPPING
    assert len(reports) == 3  # epoch 1 sets the best, epochs 2 and 3 fail to beat it


class _NaNNet(torch.nn.Module):
    """A model whose first weight turns NaN: every loss after that is NaN."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.is_head = inner.is_head
        next(inner.parameters()).data.view(-1)[0] = float("nan")

    def forward(self, x):
        return self.inner(x)


def test_nan_loss_ends_the_trial_as_diverged(colour_handle):
    reports = fit_trial(colour_handle, {"max_epochs": 5}, wrap=_NaNNet).reports
    assert len(reports) == 1 and reports[0][M.STOP_REASON] == M.DIVERGED
    assert math.isnan(reports[0][M.TRAIN_LOSS])


def test_resume_continues_where_the_checkpoint_stopped(colour_handle, tmp_path):
    common = {"max_epochs": 4, "early_stop_patience": 0}
    full = fit_trial(colour_handle, common, checkpoints=tmp_path)
    full_net = full.trial.net
    resumed_state = checkpoint.load(tmp_path / "epoch_2")
    assert resumed_state["fit"].epoch == 2 and resumed_state["fit"].best_weights is not None
    assert checkpoint.read_record(tmp_path / "epoch_2") == full.trial.record
    # a different global seed: everything that matters must come from the checkpoint
    again = fit_trial(colour_handle, common, resume=resumed_state, reseed=99)
    second, full, resumed_net = again.reports, full.reports, again.trial.net
    assert [r[M.EPOCH] for r in second] == [3, 4]
    assert second[-1][M.STOP_REASON] == M.COMPLETED
    # same data order and weights as the uninterrupted run
    assert math.isclose(second[-1][M.TRAIN_LOSS], full[-1][M.TRAIN_LOSS], rel_tol=1e-4)
    for (name, a), b in zip(full_net.state_dict().items(), resumed_net.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name


class _OutOfMemoryNet(torch.nn.Module):
    """Stands in for a model too big for the device: its forward pass runs out of memory."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.is_head = inner.is_head

    def forward(self, x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_ends_the_trial_with_a_hint(colour_handle):
    reports = fit_trial(colour_handle, {"max_epochs": 3}, wrap=_OutOfMemoryNet).reports
    assert len(reports) == 1 and reports[0][M.STOP_REASON] == M.OOM
    assert "smaller batch_size" in reports[0][M.ERROR_MESSAGE]


def test_other_errors_are_not_mistaken_for_out_of_memory(colour_handle):
    class Broken(_OutOfMemoryNet):
        def forward(self, x):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        fit_trial(colour_handle, {"max_epochs": 2}, wrap=Broken)


def test_balanced_sampler_draws_classes_equally():
    from trainables.trial.loop import train_sampler

    data = tiny_trial_data(n=12)
    data.train_labels = np.array([0] * 9 + [1] * 2 + [2] * 1)
    cfg = TrialConfig.from_dict({"sampler": "balanced"})
    drawn = []
    for seed in range(200):
        sampler = train_sampler(cfg, data, torch.Generator().manual_seed(seed))
        drawn += [int(data.train_labels[i]) for i in sampler]
    share = np.bincount(drawn, minlength=3) / len(drawn)
    assert np.allclose(share, 1 / 3, atol=0.03), share


def test_shuffle_sampler_draws_every_image_once_per_epoch_in_a_seeded_order():
    from trainables.trial.loop import train_sampler

    data = tiny_trial_data(n=12)
    cfg = TrialConfig.from_dict({"sampler": "shuffle"})
    orders = [
        list(train_sampler(cfg, data, torch.Generator().manual_seed(seed))) for seed in (0, 0, 1)
    ]
    assert sorted(orders[0]) == list(range(12))  # each image exactly once
    assert orders[0] == orders[1]  # the seed fixes the order ...
    assert orders[0] != orders[2] and orders[0] != list(range(12))  # ... and it is shuffled


def test_a_trial_that_never_leaves_chance_is_stopped_and_marked(colour_handle):
    # a learning rate too small to learn anything: validation accuracy stays at chance
    reports = fit_trial(
        colour_handle, {"max_epochs": 20, "lr": 1e-12, "early_stop_patience": 0, "chance_epochs": 3}
    ).reports
    assert [r[M.EPOCH] for r in reports] == [1, 2, 3]
    assert reports[-1][M.STOP_REASON] == M.STUCK_AT_CHANCE
    assert reports[-1][M.BEST_VAL_ACC] <= 1 / 3 + 0.03


def test_a_learning_trial_is_not_called_stuck(colour_handle):
    reports = fit_trial(
        colour_handle, {"max_epochs": 5, "early_stop_patience": 0, "chance_epochs": 2}
    ).reports
    assert reports[-1][M.STOP_REASON] == M.COMPLETED


def test_a_learning_rate_that_diverges_ends_the_trial_as_diverged(colour_handle):
    reports = fit_trial(
        colour_handle,
        {
            "max_epochs": 20,
            "optimizer": "sgd",
            "lr": 10.0,
            "momentum": 0.9,
            "early_stop_patience": 0,
            "chance_epochs": 0,
        },
    ).reports
    assert reports[-1][M.STOP_REASON] == M.DIVERGED
    assert len(reports) < 20


def test_test_metrics_carry_their_bootstrap_interval(colour_handle):
    from trainables.stats import evaluation as E

    fitted = fit_trial(colour_handle, {"max_epochs": 3, "early_stop_patience": 0})
    last = fitted.last
    p = fitted.state["fit"].predictions
    predicted = p["test_probs"].argmax(1)
    assert (last[M.TEST_ACC_LOW], last[M.TEST_ACC_HIGH]) == E.accuracy_interval(
        p["test_labels"], predicted
    )
    assert (last[M.TEST_MACRO_F1_LOW], last[M.TEST_MACRO_F1_HIGH]) == E.macro_f1_interval(
        p["test_labels"], predicted, 3
    )
    assert last[M.TEST_ACC_LOW] <= last[M.TEST_ACC] <= last[M.TEST_ACC_HIGH]
    assert M.TEST_ACC_TTA not in last  # tta is off by default


class _LeftRight(torch.nn.Module):
    """Class 0 scores the left half's brightness, class 1 the right half's: mirroring the
    image swaps the two scores."""

    def forward(self, x):
        half = x.shape[-1] // 2
        left, right = x[..., :half].mean((1, 2, 3)), x[..., half:].mean((1, 2, 3))
        return torch.stack([left, right, torch.zeros_like(left)], 1), []


def test_evaluate_with_flip_scores_the_mirror_images():
    from trainables.data.batches import Normalize
    from trainables.trial.loop import EvalSplit, evaluate

    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    x[0, :, :, :2] = 255  # bright left half
    x[1, :, :, 2:] = 255  # bright right half
    split = EvalSplit(x, torch.tensor([0, 1]), np.array(["a", "b"]))
    normalize = Normalize((0, 0, 0), (1, 1, 1))
    _, acc, probs = evaluate(_LeftRight(), split, normalize, 8, CPU)
    _, acc_flip, probs_flip = evaluate(_LeftRight(), split, normalize, 8, CPU, view=4)
    assert acc == 1.0 and acc_flip == 0.0
    assert probs_flip == pytest.approx(probs[[1, 0]])  # mirrored image 0 looks like image 1


def test_tta_column_is_the_flip_average_of_the_best_weights(colour_handle):
    from trainables.data.batches import Normalize
    from trainables.stats import evaluation as E
    from trainables.trial.loop import evaluate

    fitted = fit_trial(colour_handle, {"max_epochs": 3, "early_stop_patience": 0, "tta": "flip"})
    reports, data, net = fitted.reports, fitted.trial.data, fitted.trial.net
    net.load_state_dict(fitted.state["fit"].best_weights)
    normalize = Normalize(data.preprocess.mean, data.preprocess.std)
    plain = evaluate(net, data.test, normalize, 8, CPU)[2]
    mirrored = evaluate(net, data.test, normalize, 8, CPU, view=4)[2]
    labels = data.test.y.numpy()
    mean = (plain + mirrored) / 2
    assert reports[-1][M.TEST_ACC_TTA] == E.accuracy(labels, mean.argmax(1))
    assert reports[-1][M.TEST_MACRO_F1_TTA] == E.macro_f1(labels, mean.argmax(1), 3)
    assert reports[-1][M.TEST_ACC] == E.accuracy(labels, plain.argmax(1))
    saved = fitted.state["fit"].predictions
    assert np.allclose(saved["test_probs_tta"], mean) and np.allclose(saved["test_probs"], plain)


def test_dihedral_tta_averages_the_8_views(colour_handle):
    from trainables.data.batches import Normalize
    from trainables.trial.loop import evaluate

    fitted = fit_trial(
        colour_handle, {"max_epochs": 2, "early_stop_patience": 0, "tta": "dihedral"}
    )
    data, net = fitted.trial.data, fitted.trial.net
    net.load_state_dict(fitted.state["fit"].best_weights)
    normalize = Normalize(data.preprocess.mean, data.preprocess.std)
    views = [evaluate(net, data.test, normalize, 8, CPU, view=v)[2] for v in range(8)]
    saved = fitted.state["fit"].predictions
    assert np.allclose(saved["test_probs_tta"], sum(views) / 8, atol=1e-6)
    assert not np.allclose(views[0], views[1])  # a quarter turn is another input


def test_checkpoints_are_written_where_a_trial_may_stop_and_within_their_time_budget():
    from trainables.trial.checkpoint import CheckpointPolicy

    state = {"model": {"w": torch.zeros(15_000_000)}}  # 60 MB: estimated at 0.4 s
    policy = CheckpointPolicy(budget=0.02, stop_points=(7,))
    written = []
    for epoch in range(1, 16):
        if policy.due(epoch, epoch_seconds=10.0, stopping=epoch == 15, state=state):
            written.append(epoch)
            policy.saved(4.0)  # measured: 4 s, due again after 200 s of training
    # before any is written, 0.4 s is due after 20 s of training (epoch 2); then every 20
    # epochs of 10 s would be due, so only the scheduler's rung and the trial's end
    assert written == [2, 7, 15]
    every = CheckpointPolicy(budget=0.0)
    assert all(every.due(epoch, 10.0, False) for epoch in range(1, 5))


def test_a_last_training_batch_of_one_image_does_not_fail_batchnorm(colour_handle):
    """96 training images in batches of 95 leave one image last: resnet18's BatchNorm at
    32 px (1x1 feature maps at the end) cannot train on a batch of one, so that image sits
    the epoch out instead of failing the trial."""
    train = int(np.sum(np.asarray(colour_handle.splits) == "train"))
    fitted = fit_trial(
        colour_handle,
        {"model": "resnet18", "max_epochs": 2, "batch_size": train - 1, "early_stop_patience": 0},
    )
    assert train % (train - 1) == 1
    assert fitted.last[M.EPOCH] == 2 and np.isfinite(fitted.last[M.TRAIN_LOSS])


def test_clip_grad_bounds_every_steps_gradient_norm():
    # one plain SGD step (lr 1, no momentum) moves the weights by exactly the gradient:
    # with clip_grad the move's norm is the bound, without it the gradient's own norm
    from trainables.trial.loop import train_one_epoch

    torch.manual_seed(0)
    x, y = torch.randn(16, 5) * 100, torch.randint(0, 3, (16,))

    class Net(torch.nn.Linear):
        def forward(self, inputs):
            return super().forward(inputs), []

    def move(clip: float) -> float:
        torch.manual_seed(1)
        net = Net(5, 3)
        before = torch.cat([p.detach().flatten().clone() for p in net.parameters()])
        optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        train_one_epoch(
            net,
            [(x, y)],
            torch.nn.CrossEntropyLoss(),
            optimizer,
            scaler,
            CPU,
            0.0,
            None,
            clip_grad=clip,
        )
        after = torch.cat([p.detach().flatten() for p in net.parameters()])
        return float((after - before).norm())

    assert move(0.0) > 10  # inputs of scale 100: a large gradient
    assert move(0.5) == pytest.approx(0.5, rel=1e-4)
    assert TrialConfig.from_dict({"clip_grad": 1.0}).clip_grad == 1.0
    with pytest.raises(Exception, match="clip_grad"):
        TrialConfig.from_dict({"clip_grad": -1})


def test_a_trials_cycles_are_collected_after_the_workers_survivors_are_frozen():
    """The trial worker's clean-up freezes what outlives its first trial (the modules of
    torch, Ray and the project) so that later collections skip them; what a later trial
    leaves in a reference cycle, a model's tensors included, is still freed."""
    import gc
    import weakref

    from trainables.trial.trainable import collect_garbage

    class Node:
        pass

    def cycle_with_a_tensor():
        a, b = Node(), Node()
        a.other, b.other = b, a
        a.weights = torch.zeros(1000)
        return weakref.ref(a.weights)

    assert gc.get_freeze_count() == 0
    try:
        first = cycle_with_a_tensor()
        collect_garbage()
        assert first() is None  # the first trial's cycle: collected before the freeze
        frozen = gc.get_freeze_count()
        assert frozen > 10_000  # everything alive then: pytest's, torch's modules
        later = cycle_with_a_tensor()
        collect_garbage()
        assert later() is None
        assert gc.get_freeze_count() <= frozen  # frozen once, not again
    finally:
        gc.unfreeze()  # the rest of the suite collects as Python does
