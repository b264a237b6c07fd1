"""The frozen-feature cache (trainables/trial/frozen.py): a trial on it reports what the same
trial reports without it, the file is checked before use and rebuilt when damaged, a place
that cannot hold it falls back to the images; the dihedral views; the linear probe."""

import dataclasses
import os

import numpy as np
import pytest
import torch

from tests_support import SMALL, fit_trial
from trainables.core import metrics as M
from trainables.core.config import TrialConfig
from trainables.core.errors import UserError
from trainables.data.batch_augment import BatchAugment, dihedral_views
from trainables.data.transforms import RandomDihedral, dihedral_view
from trainables.model.record import Preprocess
from trainables.recipe.augment import augment_spec
from trainables.recipe.strategies import create_strategy
from trainables.trial import frozen
from trainables.trial.build import build_trial

pytestmark = pytest.mark.integration

RUN = {"max_epochs": 3, "early_stop_patience": 0, "chance_epochs": 0}
# a network whose stages end in inverted residual blocks (taps=expanded), untrained
MOBILENET = {"model": "mobilenet_v2", "pretrained": "false", "augment": "none"}


@pytest.fixture
def handle(colour_handle, tmp_path):
    """The colour images with a cache folder of this test's own."""
    return dataclasses.replace(colour_handle, cache_dir=str(tmp_path / "cache"))


def losses(fitted):
    return [(r[M.TRAIN_LOSS], r[M.VAL_LOSS]) for r in fitted.reports]


def assert_same_losses(a, b):
    assert len(a.reports) == len(b.reports)
    for (ta, va), (tb, vb) in zip(losses(a), losses(b)):
        assert abs(ta - tb) <= 1e-5 and abs(va - vb) <= 1e-5


@pytest.mark.parametrize(
    "overrides",
    [
        {"strategy": "feature_extractor", "augment": "none"},
        {"strategy": "feature_extractor", "augment": "dihedral", "tta": "dihedral"},
        {"strategy": "gradual_unfreeze", "augment": "dihedral", "unfreeze_epoch": 2},
        {"strategy": "feature_extractor", "augment": "dihedral", "taps": "pyramid"},
        {"strategy": "base", "augment": "dihedral", "tta": "dihedral", "frozen_fraction": 0.5},
        {"strategy": "base", "augment": "none", "frozen_fraction": 0.3, "ema_decay": 0.9},
        {"strategy": "base", "augment": "none", "frozen_fraction": 0.5, "taps": "stages"},
        {"strategy": "base", "augment": "none", "frozen_fraction": 0.5, "taps": "pyramid"},
        {**MOBILENET, "strategy": "feature_extractor", "augment": "dihedral", "taps": "expanded"},
        {**MOBILENET, "strategy": "base", "frozen_fraction": 0.5, "taps": "expanded_pyramid"},
        {
            "strategy": "gradual_unfreeze",
            "augment": "dihedral",
            "unfreeze_epoch": 1,
            "frozen_fraction": 0.5,
            "ema_decay": 0.9,
            "batchnorm": "eval",
        },
    ],
    ids=[
        "frozen-none",
        "frozen-dihedral-tta",
        "partly-frozen",
        "frozen-pyramid",
        "first-blocks-frozen-dihedral-tta",
        "first-blocks-frozen-ema",
        "first-blocks-frozen-every-stage-head",
        "first-blocks-frozen-pyramid-head",
        "frozen-expanded",
        "first-blocks-frozen-expanded-pyramid-head",
        "unfrozen-but-the-first-blocks-ema-bn-eval",
    ],
)
def test_a_cached_trial_reports_the_losses_of_an_uncached_one(handle, overrides, capfd):
    plain = fit_trial(handle, {**RUN, **overrides, "frozen_cache": "off"})
    cached = fit_trial(handle, {**RUN, **overrides})
    built = "frozen blocks' (up to " if overrides.get("frozen_fraction") else "frozen backbone's"
    assert f"computing the {built}" in capfd.readouterr().err
    assert_same_losses(plain, cached)
    frozen = RUN["max_epochs"]  # epochs on the cache: all, if the first blocks stay frozen
    if not overrides.get("frozen_fraction"):
        frozen = overrides.get("unfreeze_epoch", frozen)
    assert [r[M.IMAGES_ON] for r in cached.reports] == ["features"] * frozen + ["device"] * (
        RUN["max_epochs"] - frozen
    )
    assert {r[M.IMAGES_ON] for r in plain.reports} == {"device"}
    assert cached.last[M.TEST_ACC] == plain.last[M.TEST_ACC]
    if overrides.get("tta"):
        assert cached.last[M.TEST_ACC_TTA] == plain.last[M.TEST_ACC_TTA]
    if overrides.get("tta"):  # a second trial of the same backbone reads the file
        again = fit_trial(handle, {**RUN, **overrides, "max_epochs": 1})
        assert "computing the frozen" not in capfd.readouterr().err
        assert losses(again) == losses(cached)[:1]


def test_lp_ft_fine_tunes_all_but_its_first_blocks_on_their_cached_outputs(handle, monkeypatch):
    overrides = {**RUN, "strategy": "lp_ft", "augment": "none", "frozen_fraction": 0.5}
    cached = fit_trial(handle, overrides)
    monkeypatch.setattr(frozen, "prefix_cut", lambda *args: None)  # nowhere to cut
    plain = fit_trial(handle, overrides)
    assert [r[M.IMAGES_ON] for r in cached.reports] == ["features"] * 3
    assert [r[M.IMAGES_ON] for r in plain.reports] == ["features", "device", "device"]
    assert_same_losses(plain, cached)


def test_frozen_blocks_whose_outputs_are_too_large_are_run_on_every_batch(
    handle, monkeypatch, capfd
):
    monkeypatch.setattr(frozen, "PREFIX_MAX_BYTES", 1 << 10)
    fitted = fit_trial(handle, {**RUN, "max_epochs": 1, "augment": "none", "frozen_fraction": 0.5})
    assert fitted.last[M.IMAGES_ON] == "device"
    err = capfd.readouterr().err
    assert "outputs of the frozen blocks up to" in err and "frozen_fraction" in err
    assert not list(handle_cache(handle).glob("*.npy"))


def test_a_random_crop_or_frozen_cache_off_trains_on_the_images(handle):
    for overrides in ({"augment": "flip"}, {"augment": "none", "random_erasing": 0.5}):
        fitted = fit_trial(
            handle, {**RUN, "max_epochs": 1, "strategy": "feature_extractor", **overrides}
        )
        assert fitted.last[M.IMAGES_ON] == "device"
    assert not (handle_cache(handle)).exists()


def handle_cache(handle):
    from pathlib import Path

    return Path(handle.cache_dir) / "features"


def cache_files(handle):
    return sorted(handle_cache(handle).glob("*.npy"))


def test_another_backbone_gets_another_file(handle):
    fit_trial(handle, {**RUN, "max_epochs": 1, "strategy": "feature_extractor", "augment": "none"})
    fit_trial(
        handle,
        {**RUN, "max_epochs": 1, "strategy": "feature_extractor", "augment": "none", "seed": 1},
    )  # another seed: another random backbone
    assert len(cache_files(handle)) == 2


def test_a_backbone_read_at_one_size_or_at_two_gets_two_files(handle):
    # taps=stages and taps=pyramid: the same weights, but the pyramid's features are twice
    # as many (those of the image at half size too); neither may read the other's file
    cfg = {**RUN, "max_epochs": 1, "strategy": "feature_extractor", "augment": "none"}
    for taps in ("stages", "pyramid", "stages"):
        fit_trial(handle, {**cfg, "taps": taps})
    files = cache_files(handle)
    assert len(files) == 2
    widths = sorted(np.load(f, mmap_mode="r").shape[-1] for f in files)
    assert widths[1] == 2 * widths[0]


def test_a_backbone_read_at_its_blocks_outputs_or_expanded_maps_gets_two_files(handle):
    # taps=stages and taps=expanded: the same weights, the same blocks, but the expanded
    # maps are other (and more) features; neither may read the other's file
    cfg = {**RUN, **MOBILENET, "max_epochs": 1, "strategy": "feature_extractor"}
    for taps in ("stages", "expanded", "stages"):
        fit_trial(handle, {**cfg, "taps": taps})
    widths = sorted(np.load(f, mmap_mode="r").shape[-1] for f in cache_files(handle))
    # the mean and max of 24+32+64+96+160+320+1280 outputs; of 144+192+384+576+960+960+1280
    assert widths == [3952, 8992]


@pytest.mark.parametrize("damage", ["truncated", "altered", "record"])
def test_a_damaged_cache_file_is_computed_again_not_read(handle, damage, capfd):
    overrides = {**RUN, "max_epochs": 1, "strategy": "feature_extractor", "augment": "none"}
    first = fit_trial(handle, overrides)
    (npy,) = cache_files(handle)
    if damage == "truncated":
        os.truncate(npy, npy.stat().st_size - 100)
    elif damage == "altered":
        with open(npy, "r+b") as f:  # a float well inside the data, flipped
            f.seek(npy.stat().st_size - 64)
            f.write(b"\x7f\x7f\x7f\x7f")
    else:
        npy.with_suffix(".json").write_text("{not json")
    capfd.readouterr()
    again = fit_trial(handle, overrides)
    out = capfd.readouterr()
    assert "computing it again" in out.err
    assert "computing the frozen backbone's outputs" in out.err
    assert_same_losses(first, again)


def test_an_unwritable_cache_falls_back_to_the_images_in_one_line(handle, capfd):
    # a cache folder that cannot be made (a file in its way: what root meets where others
    # meet a read-only folder)
    handle_cache(handle).parent.mkdir(parents=True, exist_ok=True)
    handle_cache(handle).write_text("")
    fitted = fit_trial(
        handle, {**RUN, "max_epochs": 1, "strategy": "feature_extractor", "augment": "none"}
    )
    lines = [line for line in capfd.readouterr().err.splitlines() if "not cached" in line]
    assert len(lines) == 1 and "make it writable" in lines[0]
    assert {r[M.IMAGES_ON] for r in fitted.reports} == {"device"}


def test_a_full_cache_folder_falls_back_to_the_images(handle, capfd, monkeypatch):
    import shutil

    from trainables.trial import frozen

    real = shutil.disk_usage
    monkeypatch.setattr(
        frozen.shutil, "disk_usage", lambda p: real(p)._replace(free=frozen.HEADROOM_BYTES)
    )
    fitted = fit_trial(
        handle, {**RUN, "max_epochs": 1, "strategy": "feature_extractor", "augment": "none"}
    )
    (line,) = [line for line in capfd.readouterr().err.splitlines() if "not cached" in line]
    assert "MB free and the features need" in line and "free some space" in line
    assert {r[M.IMAGES_ON] for r in fitted.reports} == {"device"}
    assert cache_files(handle) == []


def test_the_dihedral_views_are_the_8_symmetries_of_the_square():
    image = torch.arange(3 * 5 * 5, dtype=torch.float32).view(1, 3, 5, 5)
    views = [dihedral_view(image, k) for k in range(8)]
    assert len({v.numpy().tobytes() for v in views}) == 8  # all distinct
    for v in views:  # each a symmetry: the same pixels, corners to corners
        assert sorted(v.flatten().tolist()) == sorted(image.flatten().tolist())
        corners = {float(v[0, 0, i, j]) for i in (0, 4) for j in (0, 4)}
        assert corners == {float(image[0, 0, i, j]) for i in (0, 4) for j in (0, 4)}
    assert torch.equal(views[4], image.flip(-1))  # view 4 is the mirror image (TTA's flip)
    # the batched form and the per-image form agree, view by view
    batch = image.repeat(8, 1, 1, 1)
    together = dihedral_views(batch, torch.arange(8))
    for k in range(8):
        assert torch.equal(together[k], views[k][0])
    torch.manual_seed(0)
    seen = {RandomDihedral()(image[0]).numpy().tobytes() for _ in range(200)}
    assert seen == {v[0].numpy().tobytes() for v in views}


def test_batched_dihedral_augmentation_draws_only_the_8_views():
    image = torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8)
    pre = Preprocess(8, 8, "bilinear", (0.0,) * 3, (1 / 255,) * 3)  # x / 255 undone
    out = BatchAugment(augment_spec("dihedral"), pre)(image.repeat(64, 1, 1, 1))
    views = {dihedral_view(image.float(), k)[0].numpy().tobytes() for k in range(8)}
    got = {x.round().numpy().tobytes() for x in out}
    assert got <= views and len(got) == 8


def test_the_linear_probe_trains_the_head_alone_and_stops_when_converged(handle):
    cfg = {**RUN, "strategy": "linear_probe", "augment": "dihedral", "weight_decay": 1e-3}
    cfg["max_epochs"] = 20
    fitted = fit_trial(handle, cfg)
    net = fitted.trial.net
    assert fitted.last[M.STOP_REASON] == M.COMPLETED and len(fitted.reports) < 20
    assert fitted.last[M.TEST_ACC] >= 0.9  # three colours: a linear problem
    # the backbone's weights and BatchNorm statistics are those it was built with
    built = build_trial(TrialConfig.from_dict({**SMALL, **cfg}), handle).net  # same seed
    state = fitted.state["model"]
    for name, tensor in built.state_dict().items():
        if not net.is_head(name):
            assert torch.equal(state[name], tensor), name
    assert not all(
        torch.equal(state[name], tensor)
        for name, tensor in built.state_dict().items()
        if net.is_head(name)
    )


@pytest.mark.parametrize(
    "overrides, says",
    [
        ({"augment": "notebook"}, "use augment=none or augment=dihedral"),
        ({"augment": "none", "random_erasing": 0.2}, "random_erasing=0.2"),
        ({"augment": "none", "frozen_cache": "off"}, "drop frozen_cache=off"),
        ({"augment": "none", "head_dropout": 0.2}, "use head_dropout=0"),
    ],
)
def test_the_linear_probe_refuses_what_it_cannot_fit_in_one_line(overrides, says):
    cfg = TrialConfig.from_dict({"strategy": "linear_probe", **overrides})
    with pytest.raises(UserError, match=says) as caught:
        create_strategy(cfg)
    assert "\n" not in str(caught.value)


def test_views_of_the_cache_follow_the_recipe():
    from trainables.trial.frozen import views_needed

    assert views_needed(TrialConfig(augment="none")) == (0,)
    assert views_needed(TrialConfig(augment="none", tta="flip")) == (0, 4)
    assert views_needed(TrialConfig(augment="none", tta="dihedral")) == tuple(range(8))
    assert views_needed(TrialConfig(augment="dihedral")) == tuple(range(8))
    assert views_needed(TrialConfig(augment="dihedral_jitter")) is None
    assert views_needed(TrialConfig(augment="dihedral", frozen_cache="off")) is None
    assert np.all(np.arange(8) == np.array(views_needed(TrialConfig(augment="dihedral"))))


def test_lp_ft_probes_the_head_on_the_frozen_network_then_trains_everything(handle):
    cfg = {**RUN, "strategy": "lp_ft", "augment": "dihedral", "weight_decay": 1e-3}
    fitted = fit_trial(handle, cfg)
    built = build_trial(TrialConfig.from_dict({**SMALL, **cfg}), handle).net
    assert [r[M.IMAGES_ON] for r in fitted.reports] == ["features", "device", "device"]
    first = fitted.reports[0]
    assert first[M.TRAIN_LOSS] < 0.5  # the probe fitted three colours in its one epoch
    # after the probe, the backbone (weights and BatchNorm statistics) is as built
    probe = fit_trial(handle, {**cfg, "max_epochs": 1}).state["model"]
    for name, tensor in built.state_dict().items():
        if not built.is_head(name):
            assert torch.equal(probe[name], tensor), name
    # then every layer trains
    last = fitted.state["model"]
    assert any(
        not torch.equal(last[name], tensor)
        for name, tensor in built.state_dict().items()
        if not built.is_head(name) and tensor.is_floating_point()
    )
    with pytest.raises(UserError, match="strategy=lp_ft fits its head on cached features"):
        create_strategy(TrialConfig.from_dict({"strategy": "lp_ft", "augment": "notebook"}))


def test_a_probe_epoch_starts_the_weights_average_from_its_fit(handle):
    # the average (ema_decay) after the probe is the probe's head, not one small step
    # towards it from the random head
    cfg = {**RUN, "max_epochs": 1, "strategy": "lp_ft", "augment": "none"}
    plain = fit_trial(handle, cfg)
    averaged = fit_trial(handle, {**cfg, "ema_decay": 0.99})
    assert averaged.last[M.VAL_LOSS] == pytest.approx(plain.last[M.VAL_LOSS], abs=1e-6)
