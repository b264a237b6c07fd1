"""The studies' building blocks: per-model preprocessing, heads, augmentation policies,
searched spaces, the per-variant ranking, config files."""

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from search_spaces import registry
from sweeps.driver.plan import create_searcher, in_flight, make_plan
from sweeps.experiment.storage import Store
from sweeps.experiment.tables import write_tables
from trainables.core import metrics as M
from trainables.core.config import TrialConfig, load_config_file
from trainables.core.errors import UserError
from trainables.data.transforms import create_train_transform
from trainables.model.factory import MODELS, HeadSpec, create_model
from trainables.recipe.augment import AUGMENTS, augment_spec
from trainables.recipe.strategies import create_strategy, set_backbone_frozen
from trainables.trial.build import preprocess_for


def test_torchvision_models_take_the_imagenet_recipe():
    for model in ("googlenet", "vgg16", "resnet50"):
        pre = preprocess_for(TrialConfig(model=model))
        assert (pre.image_size, pre.load_size, pre.interpolation) == (224, 256, "bilinear")
        assert pre.mean == (0.485, 0.456, 0.406) and pre.std == (0.229, 0.224, 0.225)


@pytest.mark.parametrize("model", [n for n in MODELS if MODELS[n].family == "timm"])
def test_each_timm_model_brings_its_own_preprocessing(model):
    """Read against timm's own resolution of the model's pretrained config (whatever the
    installed timm says), so the test follows timm rather than restating its numbers."""
    import timm

    expected = timm.data.resolve_data_config({}, model=timm.create_model(model, pretrained=False))
    pre = preprocess_for(TrialConfig(model=model))
    assert pre.image_size == expected["input_size"][-1]
    assert pre.load_size == max(pre.image_size, round(pre.image_size / expected["crop_pct"]))
    assert pre.interpolation == expected["interpolation"]
    assert pre.mean == pytest.approx(expected["mean"]) and pre.std == pytest.approx(expected["std"])
    # an explicit image_size wins, the model's crop ratio and normalisation stay
    small = preprocess_for(TrialConfig(model=model, image_size=32))
    assert small.image_size == 32 and small.mean == pre.mean


def test_decode_cache_keeps_sizes_and_interpolations_apart(image_folder, tmp_path):
    from trainables import data as D

    handle, _ = D.prepare(D.discover(image_folder), 32, tmp_path / "c", progress=False)
    a = handle.images(32, "bilinear")
    b = handle.images(32, "bicubic")
    c = handle.images(40, "bicubic")
    assert a.filename != b.filename != c.filename and c.shape[1] == 40


def test_a_vit_at_another_size_is_built_for_it():
    net = create_model("vit_base_patch16_224", 4, "false", image_size=32).net.eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 32, 32))[0].shape == (1, 4)


def test_head_with_dropout_and_hidden_layer_is_the_trainable_part():
    cfg = TrialConfig(
        model="resnet18",
        strategy="feature_extractor",
        head_dropout=0.3,
        head_hidden=64,
        pretrained="false",
    )
    net = create_model("resnet18", 5, "false", head=HeadSpec(0.3, 64)).net
    layers = [type(m).__name__ for m in net.body.fc]
    assert layers == ["Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert net.body.fc[1].out_features == 64 and net.body.fc[4].out_features == 5
    set_backbone_frozen(net, True)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"body.fc.1.weight", "body.fc.1.bias", "body.fc.4.weight", "body.fc.4.bias"}
    assert create_strategy(cfg).aux_heads is False


@pytest.mark.parametrize("policy", AUGMENTS.names())
def test_every_augmentation_policy_runs_on_decoded_images(policy):
    cfg = TrialConfig(model="small_cnn", augment=policy, image_size=32, random_erasing=0.5)
    transform = create_train_transform(augment_spec(policy), preprocess_for(cfg), 0.5)
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 37, 37), dtype=torch.uint8)
    out = transform(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_tpe_space_is_searched_with_a_budget():
    space = registry()["lr_batch_tpe"]
    plan = make_plan(space, {}, num_samples=None)
    assert plan.searched and plan.trials == 20 and plan.num_samples == 20
    assert {"lr", "batch_size", "optimizer", "weight_decay", "label_smoothing"} <= set(plan.varied)
    assert make_plan(space, {}, None, smoke=True).trials == 4
    # a fifth of the budget in flight, unless --max-concurrent says otherwise; the limit
    # is the searcher's alone (Tune refuses a second one beside it)
    assert create_searcher(plan, seed=0).max_concurrent == 4
    assert in_flight(plan, None) == 4 and in_flight(plan, 1) == 1 and in_flight(plan, 50) == 20
    assert create_searcher(plan, seed=0, max_concurrent=1).max_concurrent == 1
    # every searched key fixed (a best_config.json): no search left, a plain run
    fixed = make_plan(
        space,
        {
            "lr": 0.01,
            "batch_size": 16,
            "optimizer": "sgd",
            "weight_decay": 1e-4,
            "label_smoothing": 0.0,
        },
        num_samples=2,
    )
    assert not fixed.searched and fixed.trials == 2


def test_the_recipe_search_starts_from_the_linear_probe():
    from search_spaces.recipe import EXPANDED, PROBE, PYRAMID

    space = registry()["recipe"]
    # mobilenet_v2 (the default) has inverted residual blocks: the second probe reads them
    # at their expanded maps; small_cnn has a trunk but no such blocks: the pyramid probe
    assert make_plan(space, {}, None).points == [PROBE, EXPANDED]
    assert EXPANDED["taps"] == "expanded" and EXPANDED["image_size"] == 224
    assert make_plan(space, {"model": "small_cnn"}, None).points == [PROBE, PYRAMID]
    assert PYRAMID["taps"] == "pyramid" and PYRAMID["image_size"] == 224
    # a key the command line fixes is no longer the point's to say
    plan = make_plan(space, {"image_size": 224}, None)
    assert plan.points == [
        {k: v for k, v in p.items() if k != "image_size"} for p in (PROBE, EXPANDED)
    ]
    # what the head reads is searched for a model that names its trunk, and the probes
    # read every stage (at one size, then two); for another model neither the search nor
    # the points say it, and the two probes left differ only in image size
    taps = make_plan(space, {}, None).param_space["taps"].categories
    assert taps == ["last", "stages", "pyramid", "expanded", "expanded_pyramid"]
    # small_cnn names its trunk but has no inverted residual blocks to read expanded
    small = make_plan(space, {"model": "small_cnn"}, None).param_space["taps"].categories
    assert small == ["last", "stages", "pyramid"]
    other = make_plan(space, {"model": "resnet18"}, None)
    assert "taps" not in other.param_space
    assert other.points == [{k: v for k, v in p.items() if k != "taps"} for p in (PROBE, PYRAMID)]
    # a point outside what the search draws is refused in one line (Optuna would fail
    # with a traceback when the point's trial is asked for)
    outside = dataclasses.replace(space, points=({**PROBE, "image_size": 300},))
    with pytest.raises(UserError, match="sets image_size=300, outside what the search draws"):
        make_plan(outside, {}, None)
    # ordered classes bring the ordinal objectives into the search, and only they do
    assert make_plan(space, {}, None).param_space["objective"].categories == ["ce", "weighted_ce"]
    ordered = make_plan(space, {"class_order": "p0,p1,p2,p3"}, None).param_space["objective"]
    assert ordered.categories == ["ce", "weighted_ce", "ordinal", "weighted_ordinal"]
    broken = dataclasses.replace(space, points=({"strategy": "linear_probe"},))
    with pytest.raises(
        UserError, match="first point has no value for augment, clip_grad, ema_decay"
    ):
        make_plan(broken, {}, None)


def test_grid_space_repeats_variants_over_seeds():
    space = registry()["cnn_comparison"]
    plan = make_plan(space, {}, num_samples=3)
    assert not plan.searched and plan.trials == 6 * 3
    from search_spaces.cnn_comparison import LEARNING_RATES

    assert {c.model: c.lr for c in plan.configs} == LEARNING_RATES  # each model's own


def test_asha_grace_is_the_spaces_own_but_waits_for_gradual_unfreeze():
    from sweeps.driver.spec import asha_grace

    spaces = registry()
    study = make_plan(spaces["googlenet_strategies"], {}, num_samples=None).configs
    assert asha_grace(spaces["googlenet_strategies"], study) == 14  # measured, see the space
    assert asha_grace(spaces["lr_grid"], make_plan(spaces["lr_grid"], {}, None).configs) == 2
    # a late unfreeze lifts the grace period above the space's own; --max-epochs caps it
    late = make_plan(spaces["googlenet_strategies"], {"unfreeze_epoch": 20}, None).configs
    assert asha_grace(spaces["googlenet_strategies"], late) == 22
    short = make_plan(spaces["googlenet_strategies"], {"max_epochs": 2}, None).configs
    assert asha_grace(spaces["googlenet_strategies"], short) == 2
    # without gradual_unfreeze trials a late unfreeze_epoch changes nothing
    grid = make_plan(spaces["lr_grid"], {"unfreeze_epoch": 20}, None).configs
    assert asha_grace(spaces["lr_grid"], grid) == 2


@pytest.mark.integration  # tens of seconds
def test_timm_zoo_draws_each_lr_inside_the_models_range():
    from search_spaces.timm_zoo import LEARNING_RATE_RANGES

    for _ in range(20):
        for cfg in make_plan(registry()["timm_zoo"], {}, None).configs:
            low, high = LEARNING_RATE_RANGES[cfg.model]
            assert low <= cfg.lr <= high and cfg.image_size == 0


def _row(variant, seed, test_acc, stop=M.COMPLETED):
    return {
        "trial_id": f"{variant}{seed}",
        "variant": variant,
        "status": "TERMINATED",
        "stop_reason": stop,
        "epochs": 5,
        "best_epoch": 4,
        M.BEST_VAL_LOSS: 0.5,
        M.BEST_VAL_ACC: test_acc,
        M.TEST_ACC: test_acc,
        M.TEST_MACRO_F1: test_acc,
        "pretrained": False,
        "seed": seed,
        "wall_s": 1.0,
        "error": "",
    }


def test_variants_are_ranked_by_mean_over_seeds_without_stuck_trials(tmp_path):
    rows = [
        _row("a", 0, 0.90),
        _row("a", 1, 0.80),
        _row("b", 0, 0.86),
        _row("b", 1, 0.86),
        _row("b", 2, 0.10, M.STUCK_AT_CHANCE),
        _row("c", 0, 0.99, M.DIVERGED),
    ]
    table = write_tables(rows, Store.from_location(str(tmp_path)))
    assert set(table["stop_reason"][-2:]) == {M.STUCK_AT_CHANCE, M.DIVERGED}  # at the bottom
    summary = pd.read_csv(tmp_path / "results_by_variant.csv")
    assert list(summary["variant"]) == ["b", "a"]  # 0.86 beats 0.85; c gave no result
    assert list(summary["trials"]) == [2, 2]
    assert math.isclose(summary.loc[1, "test_acc_std"], np.std([0.9, 0.8], ddof=1))
    assert math.isclose(summary.loc[0, "test_acc_std"], 0.0)


def test_config_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "best.json"
    path.write_text(json.dumps({"lr": 0.003, "batch_size": 64, "optimizer": "adamw"}))
    assert load_config_file(str(path)) == {"lr": 0.003, "batch_size": 64, "optimizer": "adamw"}
    path.write_text(json.dumps({"lrr": 0.003}))
    with pytest.raises(UserError, match="did you mean 'lr'"):
        load_config_file(str(path))
    path.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_config_file(str(path))
    with pytest.raises(UserError, match="cannot be read"):
        load_config_file(str(tmp_path / "missing.json"))
