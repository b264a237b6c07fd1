"""Nothing runs that a file smuggles in: every file the tool loads is read without executing
code. Each case plants a pickle whose loading would create a marker file, and checks that
loading it is refused in one line and the marker never appears."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables.core.errors import UserError

pytestmark = pytest.mark.integration


class _Payload:
    """Unpickled, it would create ``marker``: what a crafted file's code could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"fit": _Payload(marker), "weight": torch.zeros(2)}, path)


def _checkpoint_state(folder: Path):
    from trainables.trial import checkpoint

    return checkpoint.load(folder)


def _checkpoint_weights(folder: Path):
    from trainables.trial import checkpoint

    return checkpoint.read_best_weights(folder)


def _export_weights(folder: Path):
    from trainables.deploy.bundle import load_export

    return load_export(folder)


def _cached_torchvision_weights(folder: Path):
    from trainables.model.factory import create_model

    return create_model("mobilenet_v2", 3, "true", weights="IMAGENET1K_V1")


def _added_weights(folder: Path):
    from trainables.model import weights as W

    return W.add(folder / "downloaded.pth", "mobilenet_v2")


def _export_folder(folder: Path) -> None:
    from trainables.deploy.bundle import ExportSpec, write_export
    from trainables.model.factory import create_model
    from trainables.model.record import Preprocess

    spec = ExportSpec(
        create_model("small_cnn", 2, "false").build,
        Preprocess(32, 36, "bilinear", (0.5,) * 3, (0.25,) * 3),
        ["a", "b"],
        {"trial_id": "t"},
    )
    write_export(folder, spec, spec.build().state_dict())


CASES = {  # what is loaded: (where the crafted file goes, the load, the one line's words)
    "checkpoint state.pt (--resume)": ("state.pt", _checkpoint_state, "refusing to load"),
    "checkpoint best_model.pt": ("best_model.pt", _checkpoint_weights, "cannot be read"),
    "export weights.pt": ("weights.pt", _export_weights, "cannot be read"),
    "a cached torchvision file": (
        "torch/hub/checkpoints/mobilenet_v2-b0353104.pth",
        _cached_torchvision_weights,
        "not a plain weights file",
    ),
    "weights add": ("downloaded.pth", _added_weights, "not a readable weights"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_crafted_pickle_is_refused_and_runs_nothing(case, tmp_path, monkeypatch):
    where, load, words = CASES[case]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "folder"
    if load is _export_weights:
        _export_folder(folder)
    marker = tmp_path / "code-ran"
    target = (tmp_path if where.startswith("torch/") else folder) / where
    _plant(target, marker)
    if load is _checkpoint_state:
        torch.save({"weight": torch.zeros(1)}, folder / "best_model.pt")
    with pytest.raises(UserError) as refused:
        load(folder)
    assert not marker.exists(), "loading the file ran its code"
    message = str(refused.value)
    assert "\n" not in message and words in message, message
    assert "weights_only=False" not in message  # never the advice to trust it


def test_a_real_checkpoint_still_loads_with_the_data_only_unpickler(colour_handle, tmp_path):
    from tests_support import fit_trial
    from trainables.trial import checkpoint

    fit_trial(colour_handle, {"max_epochs": 1}, checkpoints=tmp_path / "ck")
    state = checkpoint.load(sorted((tmp_path / "ck").iterdir())[-1])
    assert state["fit"].epoch == 1


def test_predictions_with_pickled_objects_are_refused(tmp_path):
    from trainables.trial import checkpoint

    marker = tmp_path / "code-ran"
    np.savez(tmp_path / "predictions.npz", test_probs=np.array([_Payload(marker)], dtype=object))
    with pytest.raises(UserError, match="cannot be read"):
        checkpoint.read_predictions(tmp_path)
    assert not marker.exists()


def test_a_local_sweeps_ray_listens_on_loopback_only():
    import ipaddress

    import ray

    from helpers import descendants, listening
    from sweeps.driver.cluster import start_ray

    name = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    before = os.environ.get(name)
    start_ray(None)
    try:
        # the switch that keeps it on loopback reached Ray's processes, not the caller's
        # environment: a `ray start` from this process later must still make a cluster
        assert os.environ.get(name) == before
        ports = listening(descendants(os.getpid()))
        assert len(ports) >= 3, ports  # the GCS, the raylet, the workers at least
        outside = [p for p in ports if not ipaddress.ip_address(p.rsplit(":", 1)[0]).is_loopback]
        assert not outside, outside
    finally:
        ray.shutdown()


SPEC_CASES = {  # an export's spec.json edited by someone: (the change, the one line's words)
    "zero std": (lambda raw: raw["preprocess"].update(std=[0.0, 0.2, 0.2]), "std above 0"),
    "empty mean": (lambda raw: raw["preprocess"].update(mean=[]), "3 values each"),
    "NaN mean": (lambda raw: raw["preprocess"].update(mean=[float("nan")] * 3), "finite"),
    "unknown interpolation": (
        lambda raw: raw["preprocess"].update(interpolation="lanczos9"),
        "unknown interpolation 'lanczos9'",
    ),
    "unknown architecture": (
        lambda raw: raw["model"].update(model="resnet19"),
        "unknown model 'resnet19'",
    ),
    "image size 0": (lambda raw: raw["preprocess"].update(image_size=0), "image_size 0"),
    "one class": (
        lambda raw: (raw["model"].update(num_classes=1), raw.update(class_names=["a"])),
        "at least 2",
    ),
}


@pytest.mark.parametrize("case", list(SPEC_CASES))
def test_an_edited_export_spec_is_refused_in_one_line(case, tmp_path):
    import json

    from trainables.deploy.bundle import load_export

    _export_folder(tmp_path / "export")
    path = tmp_path / "export" / "spec.json"
    raw = json.loads(path.read_text())
    change, words = SPEC_CASES[case]
    change(raw)
    path.write_text(json.dumps(raw))
    with pytest.raises(UserError) as refused:
        load_export(tmp_path / "export")
    message = str(refused.value)
    assert "\n" not in message and words in message and "spec.json" in message, message


ODD_CLASSES = {
    "=SUM(1+1)": (200, 40, 40),
    "@at": (40, 180, 60),
    "$\\bogus$": (40, 60, 200),
    "007": (200, 200, 40),
}


def test_names_a_spreadsheet_would_run_or_parse_are_kept_as_text(tmp_path, ray_address):
    """Class folders named like formulas, plotting markup or numbers: guarded in every CSV
    (a spreadsheet shows them, never runs them), read back as they were, and drawn as
    text."""
    import csv

    import numpy as np_
    from PIL import Image

    from helpers import run_cli
    from sweeps import export, predict, report
    from sweeps.experiment.folder import load_experiment

    rng = np_.random.default_rng(0)
    for name, colour in ODD_CLASSES.items():
        for i in range(8):
            pixels = np_.clip(np_.array(colour) + rng.normal(0, 25, (20, 24, 3)), 0, 255)
            (tmp_path / "imgs" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np_.uint8)).save(tmp_path / "imgs" / name / f"{i}.png")
    done = run_cli(
        [
            "--space",
            "single",
            "--set",
            "model=small_cnn",
            "--set",
            "image_size=32",
            "--data",
            str(tmp_path / "imgs"),
            "--max-epochs",
            "2",
            "--storage",
            str(tmp_path / "runs"),
            "--name",
            "odd",
            "--address",
            ray_address,
        ],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    experiment = tmp_path / "runs" / "odd"

    def cells(path: Path) -> list[str]:
        with open(path, newline="", encoding="utf-8") as handle:
            return [c for row in csv.reader(handle) for c in row]

    split_cells = cells(experiment / "split.csv")
    assert "'=SUM(1+1)" in split_cells and "'@at" in split_cells
    assert not [c for c in split_cells if c.startswith(("=", "+", "@"))]
    loaded = load_experiment(experiment)
    assert sorted(loaded.class_names) == sorted(ODD_CLASSES)  # "007" stays "007"
    assert report.main([str(experiment), "--latency-rounds", "0"]) == 0  # "$\bogus$" drawn
    assert export.main([str(experiment), "--out", str(tmp_path / "model")]) == 0
    out = tmp_path / "predictions.csv"
    predict.main([str(tmp_path / "model"), str(tmp_path / "imgs"), "--out", str(out)])
    predicted = cells(out)
    assert not [c for c in predicted if c.startswith(("=", "+", "@"))]
    assert sum(c.startswith("'=SUM(1+1)/") for c in predicted) == 8  # its images' paths


def test_joining_a_cluster_without_its_token_is_one_line(tmp_path, ray_address):
    """The session's head demands a token; a driver without one is refused, and says so in
    one line, not with Ray's warning a second while it retries."""
    import subprocess
    import sys

    from helpers import ROOT, make_image_folder

    data = make_image_folder(tmp_path / "imgs", per_class=10)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(
        PYTHONWARNINGS="ignore",
        HOME=str(tmp_path),  # no ~/.ray/auth_token either
        RAY_gcs_server_port_wait_time_s="3",
    )  # Ray's retries, shortened
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "sweeps" / "run.py"),
            "--space",
            "single",
            "--set",
            "model=small_cnn",
            "--set",
            "image_size=32",
            "--data",
            str(data),
            "--storage",
            str(tmp_path / "runs"),
            "--address",
            ray_address,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(
        f"error: --address {ray_address}: the cluster refused this driver"
    ), done.stderr[-2000:]
    assert "RAY_AUTH_TOKEN" in lines[-1]
    assert not [line for line in lines if "InvalidAuthToken" in line]  # Ray's retries held back
    assert not (tmp_path / "runs").exists()


def test_resume_opens_only_tune_state_a_sweep_of_this_user_sealed(
    tmp_path, ray_address, monkeypatch
):
    """Tune unpickles an experiment's tuner.pkl, experiment_state-*.json and
    callback-states-*.pkl on --resume: a crafted one in a folder someone hands over is
    refused in one line before Tune opens it, and runs nothing; the sweep's own files,
    sealed under this user's key, resume."""
    import pickle
    import stat

    from helpers import run_cli
    from sweeps.driver.seal import SEAL, check_sealed, key_path
    from sweeps.experiment.storage import Store

    args = ["--space", "single", "--smoke", "--set", "model=small_cnn", "--max-epochs", "1"]
    where = ["--storage", str(tmp_path / "runs"), "--name", "sealed", "--address", ray_address]
    done = run_cli([*args, *where], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    experiment = tmp_path / "runs" / "sealed"
    store = Store.from_location(str(experiment))
    assert (experiment / SEAL).is_file()
    assert stat.S_IMODE(key_path().stat().st_mode) == 0o600  # the user's alone
    resumed = run_cli(["--resume", str(experiment), "--address", ray_address], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]  # its own files: resumed

    marker = tmp_path / "code-ran"
    targets = [
        experiment / "tuner.pkl",
        next(experiment.glob("experiment_state-*.json")),
        next(experiment.glob("callback-states-*.pkl")),
    ]
    for target in targets:
        original = target.read_bytes()
        target.write_bytes(pickle.dumps(_Payload(marker)))
        try:
            if target.name == "tuner.pkl":  # the command line, once: one line, exit 2
                refused = run_cli(["--resume", str(experiment)], cwd=tmp_path)
                assert refused.returncode == 2, refused.stderr[-3000:]
                lines = refused.stderr.strip().splitlines()
                assert lines[-1].startswith("error: ") and target.name in lines[-1], lines
                assert "--trust-state" in lines[-1] and "not sealed under your key" in lines[-1]
            with pytest.raises(UserError, match=f"{target.name} is not sealed under your key"):
                check_sealed(store)  # what run.py calls before anything of Tune's
        finally:
            target.write_bytes(original)
        assert not marker.exists(), "resuming ran the crafted file's code"
    check_sealed(store)  # the sweep's own files again
    # another user's key: none of the files is sealed under it
    monkeypatch.setenv("VISIONSWEEP_STATE_KEY", "someone else's key")
    with pytest.raises(UserError, match="state file [^ ]+ is not sealed under your key"):
        check_sealed(store)
    monkeypatch.delenv("VISIONSWEEP_STATE_KEY")
    # trusted once, a folder is sealed as this user's: the next resume needs no trust
    callbacks = targets[2]
    callbacks.write_bytes(callbacks.read_bytes() + b" ")  # changed, still what Tune can read
    with pytest.raises(UserError, match=callbacks.name):
        check_sealed(store)
    trusted = run_cli(
        ["--resume", str(experiment), "--trust-state", "--address", ray_address], cwd=tmp_path
    )
    assert trusted.returncode == 0, trusted.stderr[-3000:]
    check_sealed(store)
    # the seal is the only guard: trusted, Tune itself runs what the file holds
    (experiment / "tuner.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    run_cli(["--resume", str(experiment), "--trust-state", "--address", ray_address], cwd=tmp_path)
    assert marker.exists()
