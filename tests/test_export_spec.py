"""An export folder is what one user hands another: every value of its spec.json is checked
before use, in one line naming the key, and an export never replaces a folder that is not
an export. No training: the specs are written by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from trainables.core.errors import UserError
from trainables.deploy.bundle import ExportSpec, check_replaceable, read_spec
from trainables.model.factory import create_model
from trainables.model.record import Preprocess
from trainables.stats import calibration as C


def _spec_json() -> dict:
    spec = ExportSpec(
        create_model("small_cnn", 3, "false").build,
        Preprocess(32, 36, "bilinear", (0.5,) * 3, (0.25,) * 3),
        ["a", "b", "c"],
        {"trial_id": "t"},
        {"temperature": 1.7, "scores": [0.1, 0.5], "class_scores": [[0.1], [0.2], [0.3]]},
    )
    return spec.to_json()


def _write(folder, raw) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "spec.json").write_text(json.dumps(raw))


def _edited(edit):
    raw = _spec_json()
    edit(raw)
    return raw


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda r: r["calibration"].update(temperature=-1), "calibration.temperature -1"),
        (lambda r: r["calibration"].update(temperature=0), "calibration.temperature 0"),
        (lambda r: r["calibration"].update(temperature=math.nan), "calibration.temperature nan"),
        (lambda r: r["calibration"].update(temperature="abc"), "calibration.temperature 'abc'"),
        (lambda r: r["calibration"].update(scores=[0.1, 7]), "calibration.scores"),
        (lambda r: r["calibration"].update(class_scores=[[0.1]]), "one list per class (3)"),
        (lambda r: r.update(class_names=["a", "a", "c"]), "'a' named twice"),
        (lambda r: r["model"].update(arch={"bogus": 1}), "model.arch: unknown key 'bogus'"),
        (lambda r: r["model"].update(taps="every"), "model.taps 'every'"),
    ],
)
def test_every_value_of_an_edited_spec_is_refused_in_one_line(tmp_path, edit, needle):
    _write(tmp_path / "export", _edited(edit))
    with pytest.raises(UserError, match="not a valid export spec") as refused:
        read_spec(tmp_path / "export")
    assert needle in str(refused.value) and "\n" not in str(refused.value)


def test_the_written_spec_itself_is_read(tmp_path):
    _write(tmp_path / "export", _spec_json())
    assert read_spec(tmp_path / "export").temperature == 1.7


def test_an_export_replaces_only_a_new_or_empty_folder_or_an_earlier_export(tmp_path):
    check_replaceable(tmp_path / "new")  # not there yet
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty")
    earlier = tmp_path / "earlier"
    _write(earlier, _spec_json())
    for name in ("weights.pt", "model.pt2", "model.onnx"):
        (earlier / name).write_bytes(b"x")
    check_replaceable(earlier)
    kept = tmp_path / "work"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    experiment = tmp_path / "runs" / "exp"
    experiment.mkdir(parents=True)
    (experiment / ".visionsweep").write_text("")
    (experiment / "results.csv").write_text("trial_id\n")
    for folder, needle in ((kept, "notes.txt"), (experiment, ".visionsweep"), (tmp_path, "")):
        with pytest.raises(UserError, match="not an export folder") as refused:
            check_replaceable(folder)
        assert needle in str(refused.value)
    assert (kept / "notes.txt").read_text() == "mine"


def test_no_temperature_is_fit_where_the_validation_split_cannot_support_one():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    right = np.full((200, 3), 0.2)
    right[np.arange(200), labels] = 0.6  # every image right, none sure
    assert "none of the 200" in C.calibration_skipped(right, labels)
    assert C.fit_temperature(right, labels) == 1.0  # not the search's bound (0.018)
    assert "8 validation images" in C.calibration_skipped(right[:8], labels[:8])
    assert C.fit_temperature(right[:8], labels[:8]) == 1.0
    wrong = right.copy()
    wrong[:40] = wrong[:40, ::-1]  # some wrong: a temperature is fit
    assert C.calibration_skipped(wrong, labels) is None
    assert C.fit_temperature(wrong, labels) != 1.0


def _program(folder, crafted: bool):
    """A torch.export program of a small network, saved as export.py saves one; ``crafted``:
    one weight marked to be unpickled and replaced by a pickle that creates a file."""
    import io
    import os
    import zipfile

    import torch

    net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    torch.export.save(torch.export.export(net, (torch.randn(2, 3),)), folder / "plain.pt2")
    if not crafted:
        return folder / "plain.pt2"

    class Runs:
        def __reduce__(self):
            return (os.system, (f"touch {folder / 'ran'}",))

    source = zipfile.ZipFile(folder / "plain.pt2")
    names = source.namelist()
    config_name = next(n for n in names if n.endswith("model_weights_config.json"))
    config = json.loads(source.read(config_name))
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    payload = io.BytesIO()
    torch.save(Runs(), payload)
    with zipfile.ZipFile(folder / "model.pt2", "w") as out:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename == config_name:
                data = json.dumps(config).encode()
            elif info.filename.endswith("/weights/" + first["path_name"]):
                data = payload.getvalue()
            out.writestr(info, data)
    return folder / "model.pt2"


def test_a_program_file_that_would_unpickle_code_is_refused_before_torch_opens_it(tmp_path):
    import torch

    from trainables.deploy.bundle import check_program, runtime_of

    check_program(_program(tmp_path, crafted=False))  # what export.py writes is accepted
    crafted = _program(tmp_path, crafted=True)
    with pytest.raises(UserError, match="stored to be unpickled"):
        check_program(crafted)
    with pytest.raises(UserError, match="not an export this version wrote"):
        runtime_of(tmp_path, "export", None)
    assert not (tmp_path / "ran").exists()
    with pytest.raises(Exception):  # noqa: B017 (torch's own error type, internal)
        torch.export.load(crafted)  # the check is what kept it from running: torch runs it
    assert (tmp_path / "ran").exists()


def test_an_export_that_does_not_fit_on_the_disk_is_one_line_and_writes_nothing(
    tmp_path, monkeypatch
):
    import shutil
    from collections import namedtuple

    from trainables.deploy.bundle import write_export

    spec = ExportSpec.from_json(_spec_json())
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 1 << 20))
    with pytest.raises(UserError, match="1 MB free, the export needs about") as refused:
        write_export(tmp_path / "out" / "export", spec, spec.build().state_dict())
    assert "\n" not in str(refused.value)
    assert list((tmp_path / "out").iterdir()) == []
