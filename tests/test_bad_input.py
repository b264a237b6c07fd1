"""Every command's promise on bad input, one table: one line on stderr that names the problem,
exit status 2, nothing written. The commands run in this process through the same
``cli.run`` as their scripts (a few run as real processes in test_cli.py and below)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import ROOT, A, C, make_image_folder, make_one_class_folder, write_experiment
from sweeps import cli, confirm, ensemble, export, predict, report, run, weights
from trainables.core.errors import UserError

pytestmark = pytest.mark.integration

COMMANDS = {
    "run": run.main,
    "ensemble": ensemble.main,
    "report": report.main,
    "export": export.main,
    "predict": predict.main,
    "weights": weights.main,
    "confirm": confirm.main,
}


@pytest.fixture(scope="module")
def ground(tmp_path_factory) -> Path:
    """What the bad inputs point at: images, an experiment, an export, odd files."""
    base = tmp_path_factory.mktemp("bad")
    make_image_folder(base / "imgs", per_class=4)
    make_one_class_folder(base / "one")
    (base / "empty").mkdir()
    for split in ("train", "val", "test"):
        make_image_folder(base / "presplit" / split, per_class=3)
    (base / "split.csv").write_text("path,split\n")
    for split in ("train", "test"):  # a pre-split root without val/
        make_image_folder(base / "partial" / split, per_class=3)
    write_experiment(base / "exp", {"c1": (0.5, C, C), "a1": (0.6, A, A)})
    write_experiment(base / "exp_of_imgs", {"c1": (0.5, C, C), "a1": (0.6, A, A)})
    (base / "exp_of_imgs" / "sweep.json").write_text(json.dumps({"data": str(base / "imgs")}))
    (base / "empty_exp").mkdir()
    (base / "empty_exp" / "results.csv").write_text("")
    (base / "empty_exp" / "split.csv").write_text("path,class,label,split\n")
    (base / "latin1.json").write_bytes('{"lr": "é"}'.encode("latin-1"))
    (base / "latin1.csv").write_bytes("path,split\ncaf\xe9.png,train\n".encode("latin-1"))
    (base / "a_file").write_text("not a folder")
    (base / "someones_files").mkdir()
    (base / "someones_files" / "thesis.tex").write_text("keep me")
    (base / "damaged").mkdir()
    (base / "damaged" / "sweep.json").write_text('{"args": {"space"')
    from trainables.deploy.bundle import ExportSpec, write_export
    from trainables.model.factory import create_model
    from trainables.model.record import Preprocess

    spec = ExportSpec(
        create_model("small_cnn", 2, "false").build,
        Preprocess(32, 36, "bilinear", (0.5,) * 3, (0.25,) * 3),
        ["a", "b"],
        {"trial_id": "t"},
    )
    for name in ("export", "bad_weights", "bad_spec"):
        write_export(base / name, spec, spec.build().state_dict())
    (base / "bad_weights" / "weights.pt").write_bytes(b"\x80\x02 not a torch file")
    (base / "bad_spec" / "spec.json").write_text("{ broken")
    torch.save({"w": torch.zeros(2)}, base / "tiny.pth")
    (base / "notes.pth").write_text("these are notes")
    return base


CASES = [
    # run: the study, its keys and values
    ("run", ["--space", "nope"], "unknown space 'nope'"),
    (
        "run",
        ["--space", "googlenet_strategies", "--set", "batch_size=big"],
        "bad value batch_size='big': expected int",
    ),
    (
        "run",
        ["--space", "googlenet_strategies", "--set", "model=resnet19"],
        "unknown model 'resnet19'",
    ),
    (
        "run",
        ["--space", "single", "--set", "model=small_cnn", "--set", "pretrained=true"],
        "small_cnn has no pretrained weights",
    ),
    (
        "run",
        ["--space", "googlenet_strategies", "--num-samples", "0"],
        "--num-samples: must be at least 1",
    ),
    ("run", ["--smoke"], "pass --space NAME"),
    ("run", ["--space", "googlenet_strategies", "--name", "a/b"], "plain folder name"),
    (
        "run",
        ["--space", "googlenet_strategies", "--split-file", "{g}/latin1.csv", "--split-seed", "3"],
        "--split-file and --split-seed conflict",
    ),
    (
        "run",
        ["--space", "googlenet_strategies", "--gpus-per-trial", "1", "--smoke"],
        "--gpus-per-trial 1 fits on no node",
    ),
    (
        "run",
        ["--space", "googlenet_strategies", "--cpus-per-trial", "64", "--smoke"],
        "--cpus-per-trial 64 --gpus-per-trial 0 fits on no node",
    ),
    (
        "run",
        [
            "--space",
            "single",
            "--smoke",
            "--set",
            "objective=ordinal",
            "--set",
            "class_order=0,1,2",
        ],
        "bad value class_order='0,1,2': it leaves out '3'",
    ),
    # run: flags and values
    ("run", ["--space", "single", "--bogus"], "unrecognized arguments: --bogus"),
    ("run", ["--space", "single", "--split-seed", "-1"], "--split-seed: must be at least 0"),
    ("run", ["--space", "single", "--max-concurrent", "0"], "--max-concurrent: must be at least 1"),
    ("run", ["--space", "single", "--cpus-per-trial", "nan"], "expected a finite number"),
    ("run", ["--space", "single", "--cpus-per-trial", "0"], "must be above 0"),
    ("run", ["--space", "single", "--gpus-per-trial", "-1"], "must be at least 0"),
    ("run", ["--space", "single", "--max-failures", "-1"], "--max-failures: must be at least 0"),
    ("run", ["--space", "single", "--max-epochs", "0"], "--max-epochs: must be at least 1"),
    ("run", ["--space", "single", "--max-per-class", "x"], "expected an integer"),
    ("run", ["--space", "single", "--name", "n" * 300], "at most 200 bytes"),
    ("run", ["--space", "single", "--set", "pretrained=[true]"], "two or more different values"),
    ("run", ["--space", "single", "--set", "seed=[1,2]"], "use --num-samples for seeds"),
    (
        "run",
        ["--space", "single", "--set", "model=mobilenet_v2", "--set", "weights=V9"],
        "bad value weights='V9' for mobilenet_v2",
    ),
    (
        "run",
        ["--space", "single", "--set", "model=convnext_tiny", "--set", "image_size=16"],
        "model 'convnext_tiny' cannot take 16 px images (its downsampling leaves nothing of "
        "them); use --set image_size=32 or more",
    ),
    (
        "run",
        ["--space", "single", "--set", "model=vgg16", "--set", "image_size=16"],
        "use --set image_size=32 or more",
    ),
    (
        "run",
        ["--space", "strategies", "--set", "model=[resnet18,googlenet]"],
        "compares the strategies of one model",
    ),
    # run: cross-validation
    ("run", ["--space", "single", "--folds", "2"], "--folds: must be at least 3"),
    ("run", ["--space", "single", "--folds", "3", "--scheduler", "asha"], "drop --scheduler asha"),
    ("run", ["--space", "single", "--set", "fold=1"], "pass --folds K to cross-validate"),
    ("run", ["--space", "lr_batch_tpe", "--folds", "3"], "is a search"),
    (
        "run",
        ["--space", "single", "--set", "model=small_cnn", "--data", "{g}/presplit", "--folds", "3"],
        "needs an image folder to split into folds",
    ),
    (
        "run",
        ["--space", "single", "--set", "model=small_cnn", "--data", "{g}/imgs", "--folds", "5"],
        "--folds 5 needs at least 5 per class",
    ),
    # run: files it reads
    ("run", ["--space", "single", "--config", "{g}/latin1.json"], "not UTF-8 text"),
    (
        "run",
        ["--space", "single", "--data", "{g}/imgs", "--split-file", "{g}/latin1.csv"],
        "not a CSV text file",
    ),
    ("run", ["--resume", "{g}/damaged"], "sweep.json is damaged"),
    # run: data and storage
    ("run", ["--space", "single", "--data", "{g}/missing"], "no such directory"),
    ("run", ["--space", "single", "--data", "{g}/a_file"], "is a file, not a directory"),
    ("run", ["--space", "single", "--data", "{g}/empty"], "found no images"),
    ("run", ["--space", "single", "--data", "{g}/one"], "only one class"),
    (
        "run",
        ["--space", "single", "--data", "{g}/presplit", "--split-file", "{g}/split.csv"],
        "already split into train/ val/ test/; drop --split-file",
    ),
    ("run", ["--space", "single", "--storage", "{g}/a_file/runs"], "not a writable directory"),
    ("run", ["--space", "single", "--data", "{g}/partial"], "but no val/"),
    ("run", ["--space", "single", "--data", "demo:nope"], "no such demo data"),
    (
        "run",
        [
            "--space",
            "single",
            "--data",
            "{g}/imgs",
            "--storage",
            "{g}",
            "--name",
            "imgs",
            "--overwrite",
        ],
        "not an experiment of this tool",
    ),
    (
        "run",
        ["--space", "single", "--data", "{g}/imgs", "--storage", "{g}/imgs", "--name", "inside"],
        "overlap",
    ),
    (
        "run",
        [
            "--space",
            "single",
            "--data",
            "{g}/imgs",
            "--storage",
            "{g}",
            "--name",
            "someones_files",
            "--overwrite",
        ],
        "not an experiment of this tool",
    ),
    (
        "run",
        [
            "--space",
            "single",
            "--set",
            "model=small_cnn",
            "--data",
            "{g}/imgs",
            "--address",
            "127.0.0.1:9",
        ],
        "no Ray cluster answers there",
    ),
    (
        "run",
        [
            "--space",
            "single",
            "--set",
            "model=small_cnn",
            "--data",
            "{g}/imgs",
            "--tracking",
            "http://127.0.0.1:9",
        ],
        "the MLflow tracking server cannot be used",
    ),
    # ensemble, report, export
    ("ensemble", ["{g}/exp", "--top", "1"], "--top: must be at least 2"),
    ("ensemble", ["{g}/exp", "--steps", "0"], "--steps: must be at least 1"),
    ("ensemble", ["{g}/empty_exp"], "not a readable table"),
    ("ensemble", ["{g}/a_file"], "no results.csv here"),
    ("report", ["{g}/exp", "--confusion", "-1"], "--confusion: must be at least 0"),
    ("report", ["{g}/exp", "--compare", "c1", "zz"], "trial zz: not in"),
    ("report", ["{g}/exp", "--out", "{g}/a_file"], "is a file; name a folder"),
    ("report", ["{g}/exp_of_imgs", "--out", "{g}/imgs/red/report"], "inside the data folder"),
    ("report", ["{g}/exp", "--pdf", "--browser", "{g}/nope"], "no such program; give Chromium"),
    ("report", ["{g}/exp", "--browser", "chromium"], "--browser prints the PDF: add --pdf"),
    ("export", ["{g}/exp", "--out", "{g}/a_file"], "is a file"),
    # an export replaces its folder whole: never one that is not an export
    ("export", ["{g}/exp", "--out", "{g}"], "not an export folder"),
    ("export", ["{g}/exp", "--out", "{g}/exp"], "not an export folder"),
    ("export", ["{g}/exp", "--trial", "zz"], "trial zz: not in"),
    ("export", ["{g}/exp"], "no trial.json"),
    # confirm
    ("confirm", ["{g}/exp", "--top", "1"], "--top: must be at least 2"),
    ("confirm", ["{g}/exp", "--folds", "2"], "--folds: must be at least 3"),
    ("confirm", ["{g}/a_file"], "no results.csv here"),
    # predict
    ("predict", ["{g}/export", "{g}/imgs", "--out", "{g}/missing/p.csv"], "does not exist"),
    ("predict", ["{g}/export", "{g}/imgs", "--out", "{g}/imgs"], "is a folder"),
    ("predict", ["{g}/bad_weights", "{g}/imgs", "--out", "{g}/p.csv"], "cannot be read"),
    ("predict", ["{g}/bad_spec", "{g}/imgs", "--out", "{g}/p.csv"], "not a valid export spec"),
    ("predict", ["{g}/export", "{g}/nothing", "--out", "{g}/p.csv"], "not a folder"),
    ("predict", ["{g}/export", "{g}/imgs", "--batch-size", "0"], "must be at least 1"),
    # weights
    ("weights", ["add", "{g}/missing.pth", "--model", "resnet18"], "no such file"),
    ("weights", ["add", "{g}/imgs", "--model", "resnet18"], "imgs: a folder"),
    ("weights", ["add", "{g}/notes.pth", "--model", "resnet18"], "not a readable weights file"),
    ("weights", ["add", "{g}/tiny.pth", "--model", "resnet19"], "unknown model 'resnet19'"),
    ("weights", ["add", "{g}/tiny.pth", "--model", "small_cnn"], "has no pretrained weights"),
    ("weights", ["add", "{g}/tiny.pth", "--model", "resnet18"], "does not fit resnet18"),
    ("weights", ["add", "{g}/tiny.pth"], "the following arguments are required: --model"),
    ("weights", ["list", "--model", "resnet19"], "unknown model 'resnet19'"),
    ("weights", ["fetch"], "invalid choice: 'fetch'"),
]


def _snapshot(root: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.mark.parametrize(
    "command, args, needle", CASES, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CASES)]
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    ground, tmp_path, capsys, monkeypatch, command, args, needle
):
    monkeypatch.chdir(tmp_path)  # the default storage (./runs) would land here
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    before = _snapshot(ground)
    argv = [a.replace("{g}", str(ground)) for a in args]
    with pytest.raises(SystemExit) as ended:
        cli.run(lambda: COMMANDS[command](argv))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert ended.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]
    assert _snapshot(ground) == before  # nothing changed where it pointed
    assert not any(tmp_path.iterdir())  # and nothing new beside it
    assert not (tmp_path / "torch").exists()


@pytest.mark.parametrize(
    "command", ["ensemble.py", "report.py", "export.py", "predict.py", "confirm.py", "weights.py"]
)
def test_each_script_ends_a_bad_flag_in_one_line_and_exit_2(command, tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "sweeps" / command), "--bogus"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert not list(tmp_path.iterdir())


def test_a_special_file_named_like_an_image_is_skipped_not_waited_on(tmp_path):
    """A named pipe would block a reader forever: it is listed as skipped, never opened;
    so are broken and looping links and a name that is not UTF-8."""
    from trainables import data as D

    root = make_image_folder(tmp_path / "imgs", per_class=6)
    os.mkfifo(root / "red" / "pipe.jpg")
    (root / "green" / "gone.png").symlink_to(root / "green" / "nowhere.png")
    (root / "blue" / "loop.png").symlink_to(root / "blue" / "loop.png")
    odd = os.fsencode(str(root / "red")) + b"/caf\xe9.png"
    with open(odd, "wb") as handle:
        handle.write((root / "red" / "img_001.png").read_bytes())
    os.mkdir(os.fsencode(str(root / "blue")) + b"/f\xf6tos")  # a folder inside a class
    with open(os.fsencode(str(root / "blue")) + b"/f\xf6tos/a.png", "wb") as handle:
        handle.write((root / "blue" / "img_001.png").read_bytes())
    handle, report = D.prepare(D.discover(root), 16, tmp_path / "cache", progress=False)
    reasons = {
        item["path"]: item["reason"] for items in report["skipped"].values() for item in items
    }
    assert reasons["red/pipe.jpg"] == "a named pipe, not an image file"
    assert reasons["green/gone.png"] == "a symbolic link to nothing (a broken link)"
    assert reasons["blue/loop.png"] == "a symbolic link loop"
    assert "not valid UTF-8" in reasons["red/caf\ufffd.png"]
    assert "a folder on its path is not named in valid UTF-8" in reasons["blue/f\ufffdtos/a.png"]
    assert report["images_used"] == 18 and report["images_skipped"] == 5
    csv_text = D.split_csv(handle, report)
    assert csv_text.count(",skipped") == 5
    json.dumps(report).encode("utf-8")  # writable as the data report is
    # a class folder so named is one line: its name would be every table's class name
    os.mkdir(os.fsencode(str(root)) + b"/caf\xe9")
    with pytest.raises(UserError, match="class folder .*caf\ufffd: its name is not valid"):
        D.discover(root)


def test_max_epochs_caps_every_trial_whatever_else_sets_max_epochs(tmp_path):
    from sweeps.driver.spec import SweepSpec, resolve

    config = tmp_path / "best.json"
    config.write_text(json.dumps({"max_epochs": 50, "lr": 0.01}))
    sweep = resolve(
        SweepSpec(space="lr_grid", config=str(config), max_epochs=2, overrides={"max_epochs": 40})
    )
    assert {c.max_epochs for c in sweep.plan.configs} == {2} and sweep.max_epochs == 2


def test_an_empty_split_of_a_class_is_warned_about(tmp_path):
    from sweeps.driver.prepare import data_warnings
    from trainables import data as D

    for split in ("train", "val", "test"):
        make_image_folder(tmp_path / "pre" / split, per_class=3)
    for image in (tmp_path / "pre" / "val" / "red").iterdir():
        image.unlink()
    _, report = D.prepare(D.discover(tmp_path / "pre"), 16, tmp_path / "cache", progress=False)
    lines = data_warnings(report)
    assert any("no usable image of red in val/" in line for line in lines), lines


def test_a_class_of_identical_images_is_warned_about(tmp_path):
    """Copies of one image share a split (no leakage), so a class whose images are all one
    image lands in train whole: said, not silently left unvalidated and untested."""
    import shutil

    from sweeps.driver.prepare import data_warnings
    from trainables import data as D

    root = make_image_folder(tmp_path / "imgs", per_class=10)
    first = sorted((root / "red").iterdir())[0]
    for image in (root / "red").iterdir():
        if image != first:
            image.unlink()
            shutil.copy(first, image.with_suffix(first.suffix))
    _, report = D.prepare(D.discover(root), 16, tmp_path / "cache", progress=False)
    assert report["counts"]["red"] == {"train": 10, "val": 0, "test": 0}
    lines = [line for line in data_warnings(report) if "red in val/, red in test/" in line]
    assert lines and "too few distinct images" in lines[0], data_warnings(report)


def test_a_failed_sweep_whose_variants_are_numbers_still_sums_up(tmp_path, capsys):
    """The README's own resnet_lr example: the variant is the learning rate."""
    from sweeps.experiment.storage import Store
    from sweeps.experiment.tables import print_summary, write_tables

    rows = [
        {
            "trial_id": f"t{i}",
            "variant": lr,
            "status": "TERMINATED",
            "stop_reason": stop,
            "epochs": 1,
            "best_epoch": 1,
            "best_val_loss": 0.5,
            "best_val_acc": 0.5,
            "test_acc": 0.5,
            "test_macro_f1": 0.5,
            "error": "",
        }
        for i, (lr, stop) in enumerate([(0.001, "completed"), (0.01, "diverged")])
    ]
    store = Store.from_location(str(tmp_path / "exp"))
    table = write_tables(rows, store)
    assert print_summary(table, store) == 1
    assert (
        "diverged (loss went NaN/Inf or exploded: try a lower lr): 0.01" in capsys.readouterr().out
    )


def test_a_damaged_checkpoint_file_is_named_in_one_line(tmp_path):
    """The files after-sweep tools read from a checkpoint: truncated or foreign, each is a
    UserError that names it (ensemble.py leaves such a trial out, report.py goes on without
    its part, export.py stops)."""
    import numpy as np

    from trainables.trial import checkpoint

    np.savez(tmp_path / checkpoint.PREDICTIONS_FILE, val_probs=np.zeros((2, 3)))
    whole = (tmp_path / checkpoint.PREDICTIONS_FILE).read_bytes()
    assert set(checkpoint.read_predictions(tmp_path)) == {"val_probs"}
    damaged = {
        checkpoint.PREDICTIONS_FILE: [whole[:100], b"garbage"],
        checkpoint.TEST_REPORT_FILE: [b'{"a":', b"\xff\xfe"],
        checkpoint.FINAL_FILE: [b"[1, 2"],
        checkpoint.RECORD_FILE: [b"{broken"],
    }
    read = {
        checkpoint.PREDICTIONS_FILE: checkpoint.read_predictions,
        checkpoint.TEST_REPORT_FILE: checkpoint.read_test_report,
        checkpoint.FINAL_FILE: checkpoint.final_metrics,
        checkpoint.RECORD_FILE: checkpoint.read_record,
    }
    for name, contents in damaged.items():
        for content in contents:
            (tmp_path / name).write_bytes(content)
            with pytest.raises(UserError, match=f"{name}: .*the checkpoint is damaged"):
                read[name](tmp_path)


def test_a_ctrl_c_during_the_last_cleanup_ends_quietly(capsys):
    """run.py shuts Ray down as its command ends (not in Ray's exit hook, where a second
    Ctrl-C printed a traceback): a Ctrl-C there cuts it short with exit status 130."""

    def interrupted():
        raise KeyboardInterrupt

    for code, expected in ((0, 130), (143, 143)):
        with pytest.raises(SystemExit) as ended:
            cli.run(lambda code=code: code, cleanup=interrupted)
        assert ended.value.code == expected
    assert "Traceback" not in capsys.readouterr().err
