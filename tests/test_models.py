import os

import pytest
import torch

from trainables.core.errors import UserError
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
    with pytest.raises(UserError, match="could not be loaded.*use --set pretrained=false"):
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
    built = create_model(name, 3, pretrained="true", aux_heads=aux)
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
