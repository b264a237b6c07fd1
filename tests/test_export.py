"""Export folders rebuild exactly the trained network from the trial's record, reproduce its
probabilities through predict.py, and refuse weights that do not fit their spec with a
message that names the mismatch."""

import csv
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sweeps import predict
from tests_support import fit_trial
from trainables.core.errors import UserError
from trainables.deploy.bundle import ExportSpec, load_export, runtime_of, write_export
from trainables.model.factory import MODELS, create_model
from trainables.model.record import Preprocess
from trainables.trial import checkpoint

pytestmark = pytest.mark.integration

TORCHVISION = [n for n in MODELS if MODELS[n].family == "torchvision"]


def spec_for(model="small_cnn", aux_heads=False, num_classes=3, image_size=32):
    build = create_model(model, num_classes, "false", aux_heads).build
    return ExportSpec(
        build,
        Preprocess(image_size, image_size + 4, "bilinear", (0.5,) * 3, (0.25,) * 3),
        [f"c{i}" for i in range(num_classes)],
        source={"trial_id": "t"},
    )


def test_export_round_trip_and_every_runtime_agrees(tmp_path):
    spec = spec_for()
    torch.manual_seed(0)
    weights = spec.build().state_dict()
    differences = write_export(tmp_path / "exp", spec, weights)
    assert set(differences) == {"torch", "export", "onnx"}
    assert max(differences.values()) < 1e-5
    loaded_spec, net = load_export(tmp_path / "exp")
    assert loaded_spec == spec
    assert all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())
    x = torch.randn(5, 3, 32, 32)  # another batch size than the export's example
    for runtime in ("export", "onnx"):
        got = runtime_of(tmp_path / "exp", runtime, loaded_spec)(x)
        assert np.allclose(got, net(x)[0].detach().numpy(), atol=1e-5), runtime
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_an_export_with_views_checks_them_on_random_inputs_too(tmp_path):
    # no test images to check against (another machine): the eager network over the same
    # views is the reference, in every runtime
    spec = replace(spec_for(), tta="dihedral")
    torch.manual_seed(0)
    differences = write_export(tmp_path / "exp", spec, spec.build().state_dict())
    assert max(differences.values()) < 1e-5
    assert load_export(tmp_path / "exp")[0].tta == "dihedral"


def test_an_export_that_does_not_reproduce_the_trial_is_refused_whole(tmp_path):
    spec = spec_for()
    weights = spec.build().state_dict()
    images = np.random.default_rng(0).integers(0, 255, (4, 36, 36, 3), dtype=np.uint8)
    wrong = np.full((4, 3), 1 / 3)  # not what this network gives
    with pytest.raises(
        UserError,
        match=r"the torch runtime's probabilities differ from the "
        r"trial's by .* on its test images; nothing was ",
    ):
        write_export(tmp_path / "exp", spec, weights, (images, wrong))
    assert not list(tmp_path.iterdir())


def test_googlenet_aux_heads_mismatch_is_named(tmp_path):
    trained = spec_for("googlenet", aux_heads=True, image_size=64)
    weights = trained.build().state_dict()
    without = replace(
        trained,
        model=replace(
            trained.model, aux_heads=False, arch={**trained.model.arch, "aux_logits": False}
        ),
    )
    with pytest.raises(UserError, match=r"unexpected body\.aux1\..*aux_heads must be true"):
        write_export(tmp_path / "a", without, weights)
    plain = spec_for("googlenet", aux_heads=False, image_size=64)
    write_export(tmp_path / "b", plain, plain.build().state_dict())
    spec_file = tmp_path / "b" / "spec.json"
    raw = json.loads(spec_file.read_text())
    raw["model"].update(aux_heads=True, arch={**raw["model"]["arch"], "aux_logits": True})
    spec_file.write_text(json.dumps(raw))
    with pytest.raises(UserError, match=r"missing body\.aux1\..*aux_heads must be false"):
        load_export(tmp_path / "b")


def test_vgg16_bn_weights_are_refused_by_a_vgg16_spec(tmp_path):
    bn = spec_for("vgg16_bn", image_size=32)
    vgg = replace(bn, model=replace(bn.model, model="vgg16"))
    with pytest.raises(
        UserError,
        match=r"model=vgg16.*running_mean.*batch-norm layers that "
        r"vgg16 lacks",
    ):
        write_export(tmp_path / "x", vgg, bn.build().state_dict())


def test_num_classes_mismatch_names_the_shape(tmp_path):
    spec = spec_for(num_classes=3)
    write_export(tmp_path / "e", spec, spec.build().state_dict())
    other = spec_for(num_classes=5)
    torch.save(other.build().state_dict(), tmp_path / "e" / "weights.pt")
    with pytest.raises(UserError, match=r"shape mismatch.*file \(5,.*model \(3,"):
        load_export(tmp_path / "e")


def test_predict_writes_every_image_and_names_the_unreadable(tmp_path):
    spec = spec_for()
    torch.manual_seed(1)
    write_export(tmp_path / "exp", spec, spec.build().state_dict())
    images = tmp_path / "imgs" / "sub"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(images / f"{i}.png")
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    os.mkfifo(images / "pipe.png")  # never opened: a reader would wait on it for ever
    with open(os.fsencode(str(images)) + b"/caf\xe9.png", "wb") as handle:  # not UTF-8
        handle.write((images / "0.png").read_bytes())
    out = tmp_path / "pred.csv"
    code = predict.main(
        [str(tmp_path / "exp"), str(tmp_path / "imgs"), "--out", str(out), "--batch-size", "2"]
    )
    assert code == 1  # some images could not be read; the rest are in the table
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == 8 and rows[0]["path"] == "sub/0.png"
    by_path = {r["path"]: r for r in rows}
    broken = by_path["sub/broken.jpg"]
    assert broken["predicted"] == "" and "UnidentifiedImageError" in broken["error"]
    assert by_path["sub/pipe.png"]["error"] == "a named pipe, not an image file"
    assert "not valid UTF-8" in by_path["sub/caf\ufffd.png"]["error"]
    good = [r for r in rows if not r["error"]]
    probs = np.array([[float(r[f"p_c{k}"]) for k in range(3)] for r in good])
    assert len(good) == 5 and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert [r["predicted"] for r in good] == [f"c{i}" for i in probs.argmax(1)]
    # the torch.export program and the ONNX model give the same table
    for runtime in ("export", "onnx"):
        predict.main(
            [
                str(tmp_path / "exp"),
                str(tmp_path / "imgs"),
                "--out",
                str(tmp_path / f"{runtime}.csv"),
                "--runtime",
                runtime,
            ]
        )
        other = [r for r in csv.DictReader((tmp_path / f"{runtime}.csv").open()) if not r["error"]]
        assert np.allclose(
            [[float(r[f"p_c{k}"]) for k in range(3)] for r in other], probs, atol=1e-5
        ), runtime


# ---------------------------------------------------------------- a trial, reproduced


def seed_torch_home(torch_home, name: str) -> None:
    """Put a randomly initialised file where torchvision looks for ``name``'s default
    weights: loading it is a real pretrained load (and turns on what torchvision turns on
    with weights, such as GoogLeNet's input transform)."""
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    kwargs = {"num_classes": len(weights.meta["categories"])}
    if name == "googlenet":
        kwargs.update(aux_logits=True, init_weights=True)
    torch.manual_seed(123)
    state = torchvision.models.get_model(name, weights=None, **kwargs).state_dict()
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / os.path.basename(weights.url))


def exported_probabilities(
    fitted, tmp_path, handle, tta: str = "off"
) -> tuple[np.ndarray, np.ndarray]:
    """The trial's own test probabilities (with ``tta``, the mean over its test-time views),
    and predict.py's from the image files through an export made from the trial's
    checkpoint."""
    from trainables.data import decode_image

    saved = tmp_path / "checkpoint"
    saved.mkdir()
    checkpoint.save(saved, fitted.state, fitted.trial.record)
    spec = ExportSpec.from_record(checkpoint.read_record(saved), source={"trial_id": "t"}, tta=tta)
    predictions = fitted.state["fit"].predictions
    expected = predictions["test_probs_tta" if tta != "off" else "test_probs"]
    images = np.stack(
        [
            decode_image(Path(handle.root) / p, spec.load_size, spec.interpolation)
            for p in predictions["test_ids"]
        ]
    )
    # every runtime checked against the trial's own test probabilities at export
    differences = write_export(
        tmp_path / "export",
        spec,
        checkpoint.read_best_weights(saved),
        (images, expected),
    )
    assert max(differences.values()) < 1e-4, differences
    out = tmp_path / "pred.csv"
    assert (
        predict.main(
            [str(tmp_path / "export"), handle.root, "--out", str(out), "--runtime", "onnx"]
        )
        == 0
    )
    rows = {r["path"]: r for r in csv.DictReader(out.open())}
    names = fitted.trial.record.class_names
    predicted = np.array(
        [[float(rows[path][f"p_{c}"]) for c in names] for path in predictions["test_ids"]]
    )
    return expected, predicted


def test_an_export_averages_the_trials_test_time_views_in_every_runtime(colour_handle, tmp_path):
    # barely trained: its probabilities are far from 0 and 1, where views can move them
    fitted = fit_trial(colour_handle, {"max_epochs": 1, "lr": 1e-5, "tta": "dihedral"})
    trial_probs, predicted = exported_probabilities(fitted, tmp_path, colour_handle, "dihedral")
    assert np.abs(trial_probs - predicted).max() < 1e-4
    plain = fitted.state["fit"].predictions["test_probs"]
    assert np.abs(trial_probs - plain).max() > 1e-3  # the views changed the probabilities
    served = _served_probabilities(tmp_path / "export", colour_handle, fitted)
    assert np.abs(trial_probs - served).max() < 1e-4


@pytest.mark.parametrize("taps", ["stages", "pyramid"])
def test_a_probe_on_every_stage_exports_what_it_scored(colour_handle, tmp_path, taps):
    # taps=stages: the head reads pooled maps of every stage, standardised by statistics
    # it learnt from the cached features (pyramid: also those of the image at half size);
    # every runtime predicts the views' mean it scored
    cfg = {"strategy": "linear_probe", "taps": taps}
    cfg.update(augment="dihedral", tta="dihedral", weight_decay=1e-3, max_epochs=3)
    fitted = fit_trial(colour_handle, cfg)
    assert fitted.trial.record.model.taps == taps
    assert fitted.reports[0]["images_on"] == "features"
    trial_probs, predicted = exported_probabilities(fitted, tmp_path, colour_handle, "dihedral")
    assert np.abs(trial_probs - predicted).max() < 1e-4
    assert load_export(tmp_path / "export")[0].model.taps == taps


# every torchvision model from random initialisation; from seeded pretrained weights, the
# two whose network changes with them (GoogLeNet's input transform) or that the README's
# study uses (MobileNetV2): the others load the same way (test_models checks each load).
# MobileNetV2 from random initialisation reads every stage's expanded map at two sizes
# (taps=expanded_pyramid), trained in full.
CASES = [(model, False, False) for model in TORCHVISION]
CASES += [("mobilenet_v2", False, True)]
CASES += [
    ("googlenet", True, False),
    ("googlenet", True, True),
    ("small_cnn", False, False),
    ("timm/resnet10t", False, False),
]


@pytest.mark.parametrize("model, aux, pretrained", CASES)
def test_export_and_predict_reproduce_the_trials_probabilities(
    model, aux, pretrained, colour_handle, tmp_path, monkeypatch, offline_hub
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    if pretrained:
        seed_torch_home(tmp_path / "torch", model)
    fitted = fit_trial(
        colour_handle,
        {  # plain SGD: no optimizer state to save for VGG16
            "model": model,
            "strategy": "finetuned" if aux else "base",
            "max_epochs": 1,
            "batch_size": 32,
            "optimizer": "sgd",
            "momentum": 0.0,
            "lr": 1e-3,
            "pretrained": "true" if pretrained else "false",
            "taps": "expanded_pyramid" if model == "mobilenet_v2" and not pretrained else "last",
        },
    )
    assert fitted.trial.record.model.pretrained is pretrained
    if model == "googlenet":  # what torchvision switches on with weights is recorded
        assert fitted.trial.record.model.arch["transform_input"] is pretrained
    trial_probs, predicted = exported_probabilities(fitted, tmp_path, colour_handle)
    assert np.abs(trial_probs - predicted).max() < 1e-4
    if pretrained:  # the README's models, through the REST service too
        served = _served_probabilities(tmp_path / "export", colour_handle, fitted)
        assert np.abs(trial_probs - served).max() < 1e-4


def _served_probabilities(export: Path, handle, fitted) -> np.ndarray:
    """serve.py on the export, on a free loopback port; its answer for the fitted trial's
    test images, sent as files by a real HTTP client."""
    paths = fitted.state["fit"].predictions["test_ids"]
    names = fitted.trial.record.class_names
    import subprocess
    import sys

    from helpers import ROOT, free_port, post, wait_for_port

    port = free_port()
    log = export.parent / "serve.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, str(ROOT / "sweeps" / "serve.py"), str(export), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(server, port, log)
        files = [("images", str(p), (Path(handle.root) / p).read_bytes()) for p in paths]
        status, body = post(f"http://127.0.0.1:{port}/predict", files)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert status == 200, body
    by_file = {item["file"]: item["probabilities"] for item in body["predictions"]}
    return np.array([[by_file[str(p)][c] for c in names] for p in paths])
