import os
import warnings

import pytest
import torch

from trainables.core.errors import UserError
from trainables.model import nets
from trainables.model.factory import MODELS, create_model

TIMM_SMALL = "resnet10t"  # any timm name goes through the same path


@pytest.mark.parametrize("name", [*MODELS.names(), TIMM_SMALL])
def test_every_model_builds_and_runs_one_forward_pass(name):
    # built for 32 px as a trial of image_size=32 builds it (transformers fix their grid)
    built = create_model(name, num_classes=5, pretrained="false", image_size=32)
    assert built.pretrained is False
    net = built.net.eval()
    with torch.no_grad():
        logits, aux = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 5) and aux == []
    head_params = [n for n, _ in net.named_parameters() if net.is_head(n)]
    assert head_params, "the factory must name the classifier head"
    assert len(head_params) < len(list(net.parameters()))


def test_googlenet_aux_heads_are_resized_and_returned_in_training():
    net = create_model("googlenet", 7, pretrained="false", aux_heads=True).net.train()
    logits, aux = net(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 7) and [a.shape for a in aux] == [(2, 7), (2, 7)]
    assert net.is_head("body.aux1.conv.conv.weight") and net.is_head("body.fc.weight")
    assert not net.is_head("body.inception3a.branch1.conv.weight")


def test_googlenet_without_aux_heads_has_none():
    net = create_model("googlenet", 7, pretrained="false", aux_heads=False).net.train()
    assert net.body.aux1 is None
    assert net(torch.randn(2, 3, 64, 64))[1] == []


def test_aux_heads_on_a_model_without_them_is_a_user_error():
    with pytest.raises(UserError, match="no auxiliary heads; use strategy=base"):
        create_model("resnet18", 3, pretrained="false", aux_heads=True)


def test_unknown_model_is_a_user_error():
    with pytest.raises(UserError, match="unknown model 'resnet19'"):
        create_model("resnet19", 3, pretrained="false")


def test_pretrained_true_without_weights_fails_clearly(tmp_path, monkeypatch, offline_hub):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError, match="could not be loaded.*use pretrained=false"):
        create_model("resnet18", 3, pretrained="true")


def test_pretrained_auto_falls_back_with_a_warning(tmp_path, monkeypatch, offline_hub):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.warns(UserWarning, match="random initialisation"):
        built = create_model("resnet18", 3, pretrained="auto")
    assert built.pretrained is False


def _seed_torch_home(torch_home, name: str, **kwargs) -> dict:
    """Put a (randomly initialised) weights file where torchvision looks for ``name``."""
    import torchvision

    url = torchvision.models.get_model_weights(name).DEFAULT.url
    torch.manual_seed(123)
    seeded = torchvision.models.get_model(name, weights=None, **kwargs).state_dict()
    os.makedirs(torch_home / "hub" / "checkpoints", exist_ok=True)
    torch.save(seeded, torch_home / "hub" / "checkpoints" / os.path.basename(url))
    return seeded


@pytest.mark.parametrize(
    "name, aux, first_key, kwargs",
    [
        ("resnet18", False, "conv1.weight", {}),
        ("googlenet", False, "conv1.conv.weight", {"aux_logits": True, "init_weights": True}),
        ("googlenet", True, "aux1.conv.conv.weight", {"aux_logits": True, "init_weights": True}),
    ],
)
def test_pretrained_weights_load_from_the_torch_home_cache(
    tmp_path, monkeypatch, offline_hub, name, aux, first_key, kwargs
):
    """An offline machine pre-seeded with weights (TORCH_HOME) loads them, no network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    seeded = _seed_torch_home(tmp_path, name, **kwargs)
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        built = create_model(name, 3, pretrained="true", aux_heads=aux)
    # torchvision's warning that GoogLeNet's aux heads are not pretrained: they are heads
    # the trial trains, so it is not passed on
    assert not [w for w in warned if "auxiliary heads" in str(w.message)]
    assert built.pretrained is True
    loaded = built.net.body.state_dict()
    assert torch.equal(loaded[first_key], seeded[first_key])
    assert loaded["fc.weight"].shape[0] == 3  # head replaced after loading
    assert ("aux1.fc2.weight" in loaded) is aux
    logits, aux_out = built.net.train()(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 3) and len(aux_out) == (2 if aux else 0)


def test_sweep_driver_fetches_cached_weights(tmp_path, monkeypatch, offline_hub):
    from trainables.model.factory import fetch_pretrained

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert "download refused" in fetch_pretrained("googlenet")
    _seed_torch_home(tmp_path, "googlenet", aux_logits=True, init_weights=True)
    assert fetch_pretrained("googlenet") is None


def test_small_cnn_refuses_pretrained_true():
    with pytest.raises(UserError, match="small_cnn has no pretrained weights"):
        create_model("small_cnn", 3, pretrained="true")


def assert_loads_all_but_the_head(plain, tapped):
    """The plain network's weights load into the tapped one under their own names, all
    but the head's (whose input is now the joined vector)."""
    state = {k: v for k, v in plain.state_dict().items() if not plain.is_head(k)}
    missing, unexpected = tapped.load_state_dict(state, strict=False)
    assert unexpected == [] and all(tapped.is_head(k) for k in missing)


def mean_and_max(maps, taps):
    """The mean and the max of each tapped map, joined in order."""
    return torch.cat([p for i in taps for p in (maps[i].mean((2, 3)), maps[i].amax((2, 3)))], 1)


def test_taps_stages_reads_every_stage_end_of_mobilenet_v2_as_its_pooled_maps():
    from trainables.model.nets import Tapped

    plain = create_model("mobilenet_v2", 4, pretrained="false").net.eval()
    tapped = create_model("mobilenet_v2", 4, pretrained="false", taps="stages").net.eval()
    trunk = tapped.body.features
    assert isinstance(trunk, Tapped)
    # the ends of its stages at a quarter of the input's size or coarser: the channels
    # change after blocks 3, 6, 10, 13, 16 and 17; 18 is the last
    assert trunk.taps == (3, 6, 10, 13, 16, 17, 18)
    assert_loads_all_but_the_head(plain, tapped)
    # the head reads the mean and the max of each tapped block's map, in order
    maps = {}
    for i in trunk.taps:
        plain.body.features[i].register_forward_hook(lambda m, a, out, i=i: maps.update({i: out}))
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        plain(x)
        expected = mean_and_max(maps, trunk.taps)
        got = trunk(x).flatten(1)
    assert got.shape == (2, 2 * (24 + 32 + 64 + 96 + 160 + 320 + 1280))
    assert torch.allclose(got, expected, atol=1e-6)
    head = tapped.get_submodule(tapped.head_prefixes[0])
    assert head[-1].in_features == got.shape[1]


def test_taps_expanded_reads_each_stage_end_of_mobilenet_v2_at_its_expanded_map():
    plain = create_model("mobilenet_v2", 4, pretrained="false").net.eval()
    tapped = create_model("mobilenet_v2", 4, pretrained="false", taps="expanded").net.eval()
    trunk = tapped.body.features
    assert trunk.taps == (3, 6, 10, 13, 16, 17, 18)
    assert_loads_all_but_the_head(plain, tapped)
    # an inverted residual is read at the input of its projection (the depthwise
    # convolution's ReLU6 output); the last block (a plain 1 x 1 convolution) at its output
    maps, outputs = {}, {}
    for i in trunk.taps:
        block = plain.body.features[i]
        if i < 18:
            block.conv[-2].register_forward_hook(lambda m, a, out, i=i: maps.update({i: a[0]}))
        else:
            block.register_forward_hook(lambda m, a, out, i=i: maps.update({i: out}))
    for i, block in enumerate(plain.body.features):
        block.register_forward_hook(lambda m, a, out, i=i: outputs.update({i: out}))
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        plain(x)
        expected = mean_and_max(maps, trunk.taps)
        got = trunk(x).flatten(1)
        # every block's output is the plain network's: the shortcuts are still added
        ys, y = [], x
        for i, block in enumerate(trunk):
            y = nets.expanded_forward(block, y)[0] if i in trunk.inner else block(y)
            ys.append(y)
    assert sorted(trunk.inner) == [3, 6, 10, 13, 16, 17]
    assert got.shape == (2, 2 * (144 + 192 + 384 + 576 + 960 + 960 + 1280))
    assert torch.allclose(got, expected, atol=1e-6)
    assert all(torch.allclose(ys[i], outputs[i], atol=1e-6) for i in range(len(ys)))
    assert (got[:, : 2 * 144] >= 0).all()  # after a ReLU6, where the output is linear
    head = tapped.get_submodule(tapped.head_prefixes[0])
    assert head[-1].in_features == got.shape[1]


def test_taps_expanded_is_refused_for_a_model_without_inverted_residual_blocks():
    with pytest.raises(
        UserError,
        match="taps=expanded_pyramid reads the expanded maps of "
        "inverted residual blocks, which 'small_cnn' has none of; use taps=pyramid",
    ):
        create_model("small_cnn", 3, pretrained="false", taps="expanded_pyramid")


def test_taps_pyramid_joins_every_stage_of_the_image_and_of_the_image_at_half_size():
    import torch.nn.functional as F

    stages = create_model("mobilenet_v2", 4, pretrained="false", taps="stages").net.eval()
    pyramid = create_model("mobilenet_v2", 4, pretrained="false", taps="pyramid").net.eval()
    # the same trunk weights under the same names: the every-stage network's load into it
    assert_loads_all_but_the_head(stages, pyramid)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        got = pyramid.body.features(x).flatten(1)
        full = stages.body.features(x).flatten(1)
        half = stages.body.features(F.avg_pool2d(x, 2)).flatten(1)
    assert pyramid.body.features.scales == (1, 2)
    assert got.shape == (2, 2 * full.shape[1])
    assert torch.allclose(got, torch.cat([full, half], 1), atol=1e-6)
    assert not torch.allclose(full, half, atol=1e-3)  # the half size's are other features
    head = pyramid.get_submodule(pyramid.head_prefixes[0])
    assert head[-1].in_features == got.shape[1]
    with torch.no_grad():
        logits, _ = pyramid(x)
    assert logits.shape == (2, 4)


def test_the_standardised_head_learns_its_datas_statistics_even_with_batchnorm_frozen():
    from trainables.core.config import TrialConfig
    from trainables.recipe.strategies import create_strategy

    net = create_model("small_cnn", 3, pretrained="false", taps="stages").net
    standardize = net.body.head[0]
    create_strategy(TrialConfig(strategy="feature_extractor", batchnorm="eval")).train_mode(net)
    assert standardize.training  # not a BatchNorm: batchnorm=eval leaves it learning
    x = torch.randn(500, standardize.running_mean.numel()) * 7 + 3
    for _ in range(3):  # a full-batch fit sees the same batch again and again
        standardize(x)
    assert torch.allclose(standardize.running_mean, x.mean(0), atol=1e-5)
    assert torch.allclose(standardize.running_var, x.var(0), rtol=1e-5)
    out = standardize.eval()(x)
    assert torch.allclose(out.mean(0), torch.zeros(x.shape[1]), atol=1e-4)
    assert torch.allclose(out.std(0), torch.ones(x.shape[1]), atol=1e-3)
    # features that change later (a backbone fine-tuned after its probe) are followed
    standardize.train()
    for _ in range(100):
        standardize(x - 10)
    assert torch.allclose(standardize.running_mean, x.mean(0) - 10, atol=1e-2)


def test_taps_stages_on_a_model_without_a_named_trunk_is_a_user_error():
    with pytest.raises(UserError, match="taps=stages reads the stages") as refused:
        create_model("resnet18", 3, pretrained="false", taps="stages")
    assert "use taps=last, or one of mobilenet_v2, small_cnn" in str(refused.value)


def test_a_new_kind_of_model_is_one_adapter(monkeypatch):
    """The factory and the weights store ask a model's adapter (trainables/model/families.py)
    and never branch on its family: a new source of models is one Family subclass."""
    from torch import nn

    from trainables.model import families, weights, zoo

    class Tiny(families.Family):
        has_weights = False

        def build(self, spec, arch, tag, init=True):
            body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 6), nn.ReLU())
            return body.append(nn.Linear(6, 1000)), {"width": 6}

        def head_paths(self, spec, body, num_classes):
            return ["3"]

    spec = zoo.ModelSpec("tiny_mlp", "tiny")
    monkeypatch.setitem(families.FAMILIES._items, "tiny", Tiny())
    monkeypatch.setitem(zoo.MODELS._items, "tiny_mlp", spec)
    built = create_model("tiny_mlp", num_classes=3, pretrained="false")
    assert built.build.arch == {"width": 6}  # what it was really built with, for rebuild
    logits, aux = built.net(torch.randn(2, 3, 8, 8))
    assert logits.shape == (2, 3) and aux == []
    assert built.net.is_head("body.3.weight") and not built.net.is_head("body.1.weight")
    assert weights.variants(spec) == []
    with pytest.raises(UserError, match="tiny_mlp has no pretrained weights"):
        create_model("tiny_mlp", num_classes=3, pretrained="true")


def test_the_input_size_check_runs_once_per_architecture_code(tmp_path, monkeypatch):
    """The meta-device check's verdicts are kept in the cache folder: a second check of
    the same sizes builds nothing, gives the same refusal, and a change of the model code
    (its key) checks again."""
    from trainables.model import factory, sizes

    built = []
    real = factory._runs_on_meta

    def counted(spec, aux_heads, size):
        built.append(size)
        return real(spec, aux_heads, size)

    monkeypatch.setattr(factory, "_runs_on_meta", counted)
    factory.check_input_size("vgg16", False, 64, sizes.Verdicts(tmp_path))
    with pytest.raises(UserError, match="cannot take 16 px.*; use image_size=32 or more"):
        factory.check_input_size("vgg16", False, 16, sizes.Verdicts(tmp_path))
    assert built == [64, 16, 32]
    factory.check_input_size("vgg16", False, 64, sizes.Verdicts(tmp_path))
    with pytest.raises(UserError, match="cannot take 16 px.*; use image_size=32 or more"):
        factory.check_input_size("vgg16", False, 16, sizes.Verdicts(tmp_path))
    assert built == [64, 16, 32]  # all from the record

    monkeypatch.setattr(sizes, "code_key", lambda: "other code")
    factory.check_input_size("vgg16", False, 64, sizes.Verdicts(tmp_path))
    assert built == [64, 16, 32, 64]


def test_an_unreadable_or_unwritable_record_of_input_sizes_is_checked_again(tmp_path):
    from trainables.model import factory, sizes

    record = tmp_path / sizes.FILE
    record.write_text('{"key": "')  # cut short
    with pytest.raises(UserError, match="cannot take 16 px"):
        factory.check_input_size("vgg16", False, 16, sizes.Verdicts(tmp_path))
    assert sizes.Verdicts(tmp_path).known("vgg16", False, 16)  # rewritten whole

    # a record claiming what is not so, under another key or as no verdict, is not believed
    for key, verdict in (("old", "true"), (sizes.code_key(), '"yes"')):
        record.write_text(f'{{"key": "{key}", "works": {{"vgg16|0|16": {verdict}}}}}')
        with pytest.raises(UserError, match="cannot take 16 px"):
            factory.check_input_size("vgg16", False, 16, sizes.Verdicts(tmp_path))

    # a cache "folder" that is a file (as a full or read-only one, the write fails)
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(UserError, match="cannot take 16 px"):
        factory.check_input_size("vgg16", False, 16, sizes.Verdicts(not_a_folder))
