"""Export folders rebuild exactly the trained architecture, and refuse weights that do not
fit their spec with a message that names the mismatch."""
import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from sweeps import predict
from trainables.errors import UserError
from trainables.export import ExportSpec, load_export, write_export


def spec_for(model="small_cnn", aux_heads=False, num_classes=3, image_size=32):
    return ExportSpec(model=model, num_classes=num_classes,
                      class_names=[f"c{i}" for i in range(num_classes)], aux_heads=aux_heads,
                      head_dropout=0.0, head_hidden=0, image_size=image_size,
                      load_size=image_size + 4, interpolation="bilinear",
                      mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], source={"trial_id": "t"})


def test_export_round_trip_and_torchscript_agree(tmp_path):
    spec = spec_for()
    torch.manual_seed(0)
    weights = spec.build().state_dict()
    difference = write_export(tmp_path / "exp", spec, weights)
    assert difference < 1e-5
    loaded_spec, net = load_export(tmp_path / "exp")
    assert loaded_spec == spec
    assert all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())
    traced = torch.jit.load(str(tmp_path / "exp" / "model.torchscript.pt"))
    x = torch.randn(3, 3, 32, 32)
    assert torch.allclose(traced(x), net(x)[0], atol=1e-5)


def test_googlenet_aux_heads_mismatch_is_named(tmp_path):
    trained = spec_for("googlenet", aux_heads=True, image_size=64)
    weights = trained.build().state_dict()
    with pytest.raises(UserError, match=r"unexpected body\.aux1\..*aux_heads must be true"):
        write_export(tmp_path / "a", replace(trained, aux_heads=False), weights)
    plain = spec_for("googlenet", aux_heads=False, image_size=64)
    write_export(tmp_path / "b", plain, plain.build().state_dict())
    spec_file = tmp_path / "b" / "spec.json"
    spec_file.write_text(json.dumps({**json.loads(spec_file.read_text()), "aux_heads": True}))
    with pytest.raises(UserError, match=r"missing body\.aux1\..*aux_heads must be false"):
        load_export(tmp_path / "b")


def test_vgg16_bn_weights_are_refused_by_a_vgg16_spec(tmp_path):
    bn = spec_for("vgg16_bn", image_size=32)
    with pytest.raises(UserError, match=r"model=vgg16.*running_mean.*batch-norm layers that "
                                        r"vgg16 lacks"):
        write_export(tmp_path / "x", replace(bn, model="vgg16"), bn.build().state_dict())


def test_num_classes_mismatch_names_the_shape(tmp_path):
    spec = spec_for(num_classes=3)
    write_export(tmp_path / "e", spec, spec.build().state_dict())
    other = spec_for(num_classes=5)
    torch.save(other.build().state_dict(), tmp_path / "e" / "weights.pt")
    with pytest.raises(UserError, match=r"shape mismatch.*weights \(5,.*spec \(3,"):
        load_export(tmp_path / "e")


def test_predict_writes_every_image_and_names_the_unreadable(tmp_path):
    spec = spec_for()
    torch.manual_seed(1)
    write_export(tmp_path / "exp", spec, spec.build().state_dict())
    images = tmp_path / "imgs" / "sub"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(
            images / f"{i}.png")
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "pred.csv"
    code = predict.main([str(tmp_path / "exp"), str(tmp_path / "imgs"), "--out", str(out),
                         "--batch-size", "2"])
    assert code == 1  # some images could not be read; the rest are in the table
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6 and rows[0]["path"] == "sub/0.png"
    broken = {r["path"]: r for r in rows}["sub/broken.jpg"]
    assert broken["predicted"] == "" and "UnidentifiedImageError" in broken["error"]
    good = [r for r in rows if not r["error"]]
    probs = np.array([[float(r[f"p_c{k}"]) for k in range(3)] for r in good])
    assert len(good) == 5 and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert [r["predicted"] for r in good] == [f"c{i}" for i in probs.argmax(1)]
    # the traced network gives the same table
    code = predict.main([str(tmp_path / "exp"), str(tmp_path / "imgs"), "--out",
                         str(tmp_path / "ts.csv"), "--torchscript"])
    traced = [r for r in csv.DictReader((tmp_path / "ts.csv").open()) if not r["error"]]
    assert np.allclose([[float(r[f"p_c{k}"]) for k in range(3)] for r in traced], probs,
                       atol=1e-5)
