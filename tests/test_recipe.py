"""Recipe settings of the loop: warm-up epochs before the schedule, and the weights'
moving average (timm's ModelEmaV3) as what is scored, kept as best and exported."""

import warnings

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
        {**cfg, "warmup_epochs": 2, "lr_schedule": "step", "step_size": 2, "step_gamma": 0.1},
    )
    lrs = [r[M.LR] for r in warm.reports]
    # 1/3, 2/3, then the full rate; StepLR counts its 2 epochs from there
    assert lrs == pytest.approx([1e-3, 2e-3, 3e-3, 3e-3, 3e-4])
    plain = fit_trial(colour_handle, {**cfg, "lr_schedule": "step", "step_size": 2})
    assert [r[M.LR] for r in plain.reports] == pytest.approx([3e-3, 3e-3, 3e-4, 3e-4, 3e-5])


def test_lp_ft_warms_up_its_fine_tuning_not_its_probe(colour_handle, tmp_path):
    # the probe's epoch takes no step of the optimizer: the warm-up and the schedule start
    # with the first fine-tuning epoch
    cfg = {"max_epochs": 4, "early_stop_patience": 0, "chance_epochs": 0, "lr": 3e-3}
    cfg.update(strategy="lp_ft", augment="none", warmup_epochs=1, lr_schedule="step", step_size=1)
    fitted = fit_trial(colour_handle, {**cfg, "step_gamma": 0.1})
    lrs = [r[M.LR] for r in fitted.reports]
    assert [r[M.IMAGES_ON] for r in fitted.reports][:2] == ["features", "device"]
    # probe (lr unused), fine-tuning at half the rate (warm-up), the full rate, one step
    assert lrs[1:] == pytest.approx([1.5e-3, 3e-3, 3e-4])
    # nor does a linear probe's schedule step (torch warned of a scheduler stepped before
    # its optimizer, once per probe trial)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        probe = fit_trial(colour_handle, {**cfg, "strategy": "linear_probe", "warmup_epochs": 0})
    assert {r[M.LR] for r in probe.reports} == {3e-3}


def test_a_resumed_warmup_goes_on_where_it_stopped(colour_handle, tmp_path):
    from trainables.trial import checkpoint

    cfg = {"max_epochs": 4, "early_stop_patience": 0, "chance_epochs": 0, "lr": 3e-3}
    cfg.update(warmup_epochs=3, lr_schedule="none")
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


def test_grade_ranks_follow_the_given_order_and_refuse_a_wrong_one():
    from trainables.core.errors import UserError
    from trainables.recipe.losses import grade_ranks

    names = ("high", "low", "mid")
    assert grade_ranks("", names) == [0, 1, 2]
    assert grade_ranks("low, mid, high", names) == [2, 0, 1]
    for order, says in (
        ("low,mid,top", "names 'top', which is not a class"),
        ("low,mid", "leaves out 'high'"),
        ("low,mid,high,low", "names 'low' twice"),
    ):
        with pytest.raises(UserError, match=says) as caught:
            grade_ranks(order, names)
        assert "lowest grade first (the classes are high, low, mid)" in str(caught.value)


def test_class_weight_power_softens_the_class_weights_of_the_weighted_losses():
    from trainables.core.config import TrialConfig
    from trainables.core.errors import UserError
    from trainables.recipe.losses import create_loss

    counts = [300, 100, 20]  # inverse frequency: 140/300, 140/100, 140/20
    full = torch.tensor([140 / 300, 1.4, 7.0])
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 0.2], [-0.5, 1.0, 0.4]])
    target = torch.tensor([0, 1, 2])
    for objective in ("weighted_ce", "weighted_ordinal"):
        weights = {}
        for power in (1.0, 0.5, 0.0):
            cfg = TrialConfig.from_dict({"objective": objective, "class_weight_power": power})
            loss = create_loss(cfg, counts, ["a", "b", "c"])
            weights[power] = (loss.weight if objective == "weighted_ce" else loss.ce.weight).clone()
        assert torch.allclose(weights[1.0], full)
        assert torch.allclose(weights[0.5], full.sqrt())
        assert torch.equal(weights[0.0], torch.ones(3))
    # at power 0 the weighted loss is the plain one
    plain = create_loss(TrialConfig.from_dict({"objective": "ce"}), counts)
    none = create_loss(
        TrialConfig.from_dict({"objective": "weighted_ce", "class_weight_power": 0}), counts
    )
    assert none(logits, target).item() == pytest.approx(plain(logits, target).item())
    with pytest.raises(UserError, match=r"class_weight_power=3.0.*\[0, 2\]"):
        TrialConfig.from_dict({"class_weight_power": 3})


def test_the_ordinal_loss_costs_more_the_further_off_the_grade():
    from trainables.recipe.losses import OrdinalLoss

    # classes by label: 0 = "mid", 1 = "low", 2 = "high"; true class: low (grade 0)
    loss = OrdinalLoss(ranks=[1, 0, 2])
    target = torch.tensor([1])
    sure = 8.0
    one_off = loss(torch.tensor([[sure, 0.0, 0.0]]), target)  # says mid: one grade off
    two_off = loss(torch.tensor([[0.0, 0.0, sure]]), target)  # says high: two grades off
    right = loss(torch.tensor([[0.0, sure, 0.0]]), target)
    assert right < one_off < two_off
    # cross-entropy alone cannot tell the two wrong answers apart
    ce = torch.nn.functional.cross_entropy
    assert ce(torch.tensor([[sure, 0.0, 0.0]]), target) == ce(
        torch.tensor([[0.0, 0.0, sure]]), target
    )


def test_an_ordinal_trial_reports_the_grade_error_in_the_order_given(colour_handle):
    names = colour_handle.class_names
    order = ",".join(reversed(names))
    cfg = {"max_epochs": 2, "early_stop_patience": 0, "chance_epochs": 0}
    fitted = fit_trial(colour_handle, {**cfg, "objective": "ordinal", "class_order": order})
    last = fitted.last
    probs = fitted.state["fit"].predictions["test_probs"]
    labels = fitted.state["fit"].predictions["test_labels"]
    ranks = torch.tensor([len(names) - 1 - i for i in range(len(names))])
    expected = (ranks[probs.argmax(1)] - ranks[labels]).abs().float().mean().item()
    assert last[M.TEST_GRADE_ERROR] == pytest.approx(expected)
    assert probs.shape[1] == len(names)  # a probability per class, as any trial
    plain = fit_trial(colour_handle, cfg)
    assert M.TEST_GRADE_ERROR not in plain.last


@pytest.mark.parametrize("model", ["mobilenet_v2", "timm/resnet10t"])
def test_layer_decay_gives_each_block_its_rate_the_head_the_full_one(model):
    from trainables.core.config import TrialConfig
    from trainables.model.factory import create_model
    from trainables.recipe.optim import layer_blocks
    from trainables.recipe.strategies import create_strategy

    net = create_model(model, 4, "false").net
    cfg = TrialConfig(model=model, pretrained="false", lr=1e-3, layer_decay=0.7)
    groups = create_strategy(cfg).create_optimizer(net).param_groups
    blocks = layer_blocks(net)
    assert len(groups) == len(blocks) > 4
    assert [g["lr"] for g in groups] == pytest.approx(
        [1e-3 * 0.7 ** (len(blocks) - 1 - i) for i in range(len(blocks))]
    )
    params = dict(net.named_parameters())
    assert {id(p) for p in groups[-1]["params"]} == {
        id(params[n]) for n in params if net.is_head(n)
    }
    assert sum(len(g["params"]) for g in groups) == len(params)  # each parameter once


def test_a_frozen_fraction_keeps_the_first_blocks_as_built(colour_handle):
    from tests_support import SMALL
    from trainables.core.config import TrialConfig
    from trainables.recipe.strategies import frozen_prefix
    from trainables.trial.build import build_trial

    cfg = {"max_epochs": 2, "early_stop_patience": 0, "chance_epochs": 0, "frozen_fraction": 0.5}
    fitted = fit_trial(colour_handle, cfg)
    built = build_trial(TrialConfig.from_dict({**SMALL, **cfg}), colour_handle).net
    prefix = frozen_prefix(built, 0.5)
    after = fitted.state["model"]
    assert prefix and all(not built.is_head(n) for n in prefix)
    for name, tensor in built.state_dict().items():
        frozen_block = any(name.startswith(p.rpartition(".")[0] + ".") for p in prefix)
        if frozen_block:  # weights and BatchNorm statistics alike
            assert torch.equal(after[name], tensor), name
    moved = [n for n, t in built.state_dict().items() if not torch.equal(after[n], t)]
    assert moved and not set(moved) & prefix  # the rest trained


def test_batchnorm_eval_keeps_the_running_statistics_while_everything_trains(colour_handle):
    from tests_support import SMALL
    from trainables.core.config import TrialConfig
    from trainables.trial.build import build_trial

    cfg = {"max_epochs": 1, "early_stop_patience": 0, "chance_epochs": 0, "batchnorm": "eval"}
    built = build_trial(TrialConfig.from_dict({**SMALL, **cfg}), colour_handle).net.state_dict()
    after = fit_trial(colour_handle, cfg).state["model"]
    stats = [n for n in built if n.endswith(("running_mean", "running_var"))]
    scales = [
        n for n in built if n.endswith(".weight") and n.replace("weight", "running_mean") in built
    ]
    assert stats and scales
    assert all(torch.equal(after[n], built[n]) for n in stats)  # the statistics as built
    assert all(not torch.equal(after[n], built[n]) for n in scales)  # their scales learnt
    trained = fit_trial(colour_handle, {**cfg, "batchnorm": "train"}).state["model"]
    assert not all(torch.equal(trained[n], built[n]) for n in stats)
