"""The command line as a user runs it: a fresh process, a real local Ray cluster, real files."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from helpers import make_image_folder, run_cli

pytestmark = pytest.mark.integration

REQUIRED_COLUMNS = {
    "trial_id",
    "variant",
    "status",
    "stop_reason",
    "epochs",
    "best_val_loss",
    "best_val_acc",
    "test_acc",
    "test_macro_f1",
    "pretrained",
    "wall_s",
}


def _one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    "args, needles",
    [
        (
            ["--space", "googlenet_strategies", "--set", "lrr=0.1"],
            ["unknown config key 'lrr'", "did you mean 'lr'"],
        ),
        (["--space", "googlenet_strategies", "--bogus"], ["unrecognized arguments: --bogus"]),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, args, needles):
    """As a user meets it, in a fresh process; tests/test_bad_input.py has the whole table."""
    storage = tmp_path / "storage"
    result = run_cli([*args, "--storage", str(storage)], cwd=tmp_path)
    _one_line_error(result, *needles)
    assert not storage.exists()


def test_list_spaces_describes_each_space(tmp_path):
    result = run_cli(["--list-spaces"], cwd=tmp_path)
    assert result.returncode == 0
    lines = dict(line.split(None, 1) for line in result.stdout.strip().splitlines())
    assert {"googlenet_strategies", "cnn_comparison", "timm_zoo", "lr_batch_tpe"} <= set(lines)
    assert "12 variants" in lines["googlenet_strategies"]
    assert "TPE" in lines["lr_batch_tpe"]


def test_smoke_sweep_of_the_googlenet_study(tmp_path, ray_address):
    """The README's main command in --smoke form: 12 trials through Ray Tune on the demo data."""
    result = run_cli(
        [
            "--space",
            "googlenet_strategies",
            "--smoke",
            "--storage",
            str(tmp_path / "runs"),
            "--name",
            "smoke",
            "--address",
            ray_address,
        ],
        cwd=tmp_path,
        merged=True,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    # the table and the lines naming its files end the output: Ray's held-back log lines
    # ("... [repeated 4x across cluster]") came below them while Ray stopped after the table
    last = result.stdout.rstrip().splitlines()[-1]
    assert last.startswith("TensorBoard: tensorboard --logdir"), result.stdout[-1500:]
    experiment = tmp_path / "runs" / "smoke"
    table = pd.read_csv(experiment / "results.csv")
    assert len(table) == 12 and REQUIRED_COLUMNS <= set(table.columns)
    assert set(table["variant"]) == {
        f"{s}-{o}"
        for s in ("base", "finetuned", "feature_extractor", "gradual_unfreeze")
        for o in ("ce", "ls", "ls_plateau")
    }
    assert (table["stop_reason"] == "completed").all() and (table["epochs"] == 2).all()
    assert table["test_acc"].between(0, 1).all() and table["test_macro_f1"].notna().all()
    assert not table["pretrained"].any()  # no network here: random init, and the table says so
    assert "# Trials" in (experiment / "results.md").read_text()
    assert f"tensorboard --logdir '{experiment}'" in result.stdout
    split = pd.read_csv(experiment / "split.csv")
    assert len(split) == 100 and set(split["split"]) == {"train", "val", "test"}
    report = json.loads((experiment / "data_report.json").read_text())
    assert report["images_used"] == 100 and report["images_skipped"] == 0

    trial_dirs = sorted(p for p in experiment.iterdir() if p.is_dir() and "_s0_" in p.name)
    assert len(trial_dirs) == 12
    for trial_dir in trial_dirs:
        _check_tensorboard(trial_dir)
        _check_checkpoint(trial_dir, num_test=len(split[split["split"] == "test"]))


def _check_tensorboard(trial_dir: Path) -> None:
    """Scalars and HParams, read back with TensorBoard's own event reader."""
    events = EventAccumulator(str(trial_dir))
    events.Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("train_loss", "val_loss", "val_acc", "lr", "test_acc"):
        assert tag in scalars, (trial_dir.name, scalars)
    assert [e.step for e in events.Scalars("val_loss")] == [1, 2]
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    variant = trial_dir.name.split("_s0_")[0]
    assert start.hparams["variant"].string_value == variant
    strategy, objective = variant.split("-")
    assert start.hparams["strategy"].string_value == strategy
    assert start.hparams["objective"].string_value == objective
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]
    ).experiment
    assert {h.name for h in experiment.hparam_infos} == {"variant", "strategy", "objective"}
    assert "best_val_loss" in {m.name.tag for m in experiment.metric_infos}


def _check_checkpoint(trial_dir: Path, num_test: int) -> None:
    checkpoints = sorted(trial_dir.glob("checkpoint_*"))
    assert len(checkpoints) == 1  # only the latest is kept; it carries the best weights
    with np.load(checkpoints[0] / "predictions.npz") as npz:
        assert npz["test_probs"].shape == (num_test, 10)
        assert len(npz["val_ids"]) == len(npz["val_labels"])
    assert (checkpoints[0] / "best_model.pt").exists()


def test_existing_experiment_is_not_overwritten(tmp_path):
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    (tmp_path / "runs" / "taken" / "results.csv").write_text("keep me")
    result = run_cli(
        ["--space", "googlenet_strategies", "--storage", str(tmp_path / "runs"), "--name", "taken"],
        cwd=tmp_path,
    )
    _one_line_error(result, "already exists")
    assert (tmp_path / "runs" / "taken" / "results.csv").read_text() == "keep me"


def test_seeds_odd_paths_and_image_kinds_through_a_whole_sweep(tmp_path, ray_address):
    """Brackets, colons, spaces and Korean letters in data and storage paths; every common
    image kind; a truncated JPEG, skipped and listed; --num-samples repeats the variant over
    seeds. Then the same name again, refused, then --overwrite."""
    from test_real_data import make_odd_dataset

    data = make_odd_dataset(tmp_path)
    storage = tmp_path / "결과 runs [1] (a:b)"
    args = [
        "--space",
        "googlenet_strategies",
        "--data",
        str(data),
        "--smoke",
        "--storage",
        str(storage),
        "--name",
        "odd: name [1]",
        "--set",
        "model=small_cnn",
        "--set",
        "strategy=base",
        "--set",
        "objective=ce",
        "--num-samples",
        "2",
        "--address",
        ray_address,
    ]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    experiment = storage / "odd: name [1]"
    table = pd.read_csv(experiment / "results.csv")
    assert sorted(table["seed"]) == [0, 1] and set(table["variant"]) == {"base-ce"}
    assert (table["stop_reason"] == "completed").all()
    assert table["test_acc"].between(0, 1).all()
    by_variant = pd.read_csv(experiment / "results_by_variant.csv")
    assert by_variant.loc[0, "trials"] == 2
    assert math.isclose(by_variant.loc[0, "test_acc_mean"], table["test_acc"].mean())
    assert "By variant" in result.stdout
    report = json.loads((experiment / "data_report.json").read_text(encoding="utf-8"))
    assert report["images_skipped"] == 1
    assert [s["path"] for items in report["skipped"].values() for s in items] == [
        "잎마름병 (blight)/cut_off.jpg"
    ]
    assert "skipped 1 unreadable" in result.stderr
    split = pd.read_csv(experiment / "split.csv")
    assert "정상: healthy" in set(split["class"])
    trial_dir = next(p for p in experiment.iterdir() if p.is_dir() and p.name.startswith("base"))
    events = EventAccumulator(str(trial_dir))
    events.Reload()
    assert "val_loss" in events.Tags()["scalars"]
    assert any(trial_dir.glob("checkpoint_*/predictions.npz"))

    again = run_cli(args, cwd=tmp_path)
    _one_line_error(again, "already exists", "--overwrite")
    assert (experiment / "results.csv").exists()
    replaced = run_cli([*args, "--overwrite"], cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert len(pd.read_csv(experiment / "results.csv")) == 2


def test_a_failing_trial_is_tabled_and_the_others_go_on(tmp_path, monkeypatch, capsys):
    """Of two trials in one sweep on a real local Ray instance, one raises (a failure on
    cue, trainables/core/faults.py; a model too big for its input is refused before any trial
    now); the other trains."""
    import ray

    import search_spaces
    from sweeps import run

    space = search_spaces.Space(
        name="mixed",
        description="one trial that fails, one that trains",
        param_space={
            "model": "small_cnn",
            "strategy": "base",
            "pretrained": "false",
            "image_size": 16,
            "max_epochs": 2,
        },
        variant_keys=("model",),
    )
    monkeypatch.setattr(search_spaces, "registry", lambda: {"mixed": space})
    monkeypatch.setenv("VISIONSWEEP_FAULTS", "fail_seed=1")
    data = make_image_folder(tmp_path / "imgs", per_class=10)
    try:
        code = run.main(
            [
                "--space",
                "mixed",
                "--data",
                str(data),
                "--storage",
                str(tmp_path / "runs"),
                "--name",
                "mixed",
                "--max-failures",
                "0",
                "--num-samples",
                "2",
            ]
        )
    finally:
        ray.shutdown()
    assert code == 1
    table = pd.read_csv(tmp_path / "runs" / "mixed" / "results.csv").set_index("seed")
    assert table.loc[0, "stop_reason"] == "completed" and table.loc[0, "epochs"] == 2
    assert table.loc[1, "stop_reason"] == "error"
    assert table.loc[1, "error"] == "RuntimeError: a failure on cue for the tests (fail_seed=1)"
    out = capsys.readouterr().out
    assert (
        "1 of 2 trials failed" in out and "error (its error is below the table): small_cnn" in out
    )
    # the terminal's table fits a terminal (results.md has every column) and names the error
    table_lines = [line for line in out.splitlines() if line.startswith("|")]
    assert table_lines and max(map(len, table_lines)) <= 120, table_lines
    assert "params" not in table_lines[0] and "test_acc" in table_lines[0]
    assert "RuntimeError: a failure on cue for the tests (fail_seed=1)" in out.split("|")[-1]


@pytest.mark.parametrize(
    "space, models",
    [("cnn_comparison", "small_cnn,googlenet"), ("timm_zoo", "tf_efficientnetv2_s,resnet50")],
)
def test_each_grid_study_runs_in_smoke(tmp_path, space, models, ray_address):
    """Two of each study's models, end to end (every registered model's forward pass is in
    test_models.py): each with its own learning rate from the study's table."""
    result = run_cli(
        [
            "--space",
            space,
            "--smoke",
            "--max-epochs",
            "1",
            "--set",
            f"model=[{models}]",
            "--storage",
            str(tmp_path),
            "--name",
            "s",
            "--address",
            ray_address,
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "s" / "results.csv")
    assert len(table) == 2 and table["test_acc"].between(0, 1).all()
    assert set(table["model"]) == set(models.split(",")) and table["lr"].nunique() == 2


def test_the_recipe_study_tries_the_linear_probe_first_and_names_the_confirmation(
    tmp_path, ray_address
):
    result = run_cli(
        ["--space", "recipe", "--smoke", "--storage", str(tmp_path), "--name", "r"]
        # a limit of the user's own beside the search's: Tune refused the two together
        + ["--max-concurrent", "2", "--address", ray_address],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "r" / "results.csv")
    assert len(table) == 4 and table["test_acc"].between(0, 1).all()
    # the study's first point, as written (a TPE draw would not give 1e-2 exactly), scored
    # on the mean over the 8 views
    probe = table[table["strategy"] == "linear_probe"]
    first = probe[probe["weight_decay"] == 1e-2]
    assert len(first) >= 1 and (first["augment"] == "dihedral").all()
    assert (first["tta"] == "dihedral").all() and first["test_acc_tta"].notna().all()
    assert (tmp_path / "r" / "best_config.json").exists()
    assert f"python sweeps/confirm.py '{tmp_path / 'r'}' --top 3 --folds 5" in result.stdout
    # the workers' lines (the frozen features' progress) reach a pipe without colour codes
    worker = [line for line in result.stderr.splitlines() if "(train_trial pid=" in line]
    assert worker and not any(line.startswith("\x1b[") for line in worker)


def test_tpe_search_resumed_keeps_its_optuna_study_saves_its_best_config_and_it_re_runs(
    tmp_path, ray_address, monkeypatch
):
    """A TPE search whose driver is killed after three trials, resumed: the Optuna journal
    in the experiment holds every trial once, in one study (the resumed searcher is still
    TPE, asking the study that holds the first three); then the best configuration is
    saved and re-runs, and the report says which searched settings mattered."""
    import pickle

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    experiment = tmp_path / "tpe"
    monkeypatch.setenv("VISIONSWEEP_FAULTS", "kill_driver_after=3")
    killed = run_cli(
        [
            "--space",
            "lr_batch_tpe",
            "--smoke",
            "--num-samples",
            "6",
            "--set",
            "model=small_cnn",
            "--storage",
            str(tmp_path),
            "--name",
            "tpe",
            "--address",
            ray_address,
        ],
        cwd=tmp_path,
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    journal = JournalStorage(JournalFileBackend(str(experiment / "optuna.journal")))
    before = [
        t
        for t in optuna.load_study(study_name="sweep", storage=journal).trials
        if t.state.name == "COMPLETE"
    ]
    assert len(before) == 3
    monkeypatch.delenv("VISIONSWEEP_FAULTS")
    result = run_cli(["--resume", str(experiment), "--address", ray_address], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "tpe" / "results.csv")
    assert len(table) == 6 and table["lr"].nunique() == 6
    study = optuna.load_study(
        study_name="sweep",
        storage=JournalStorage(JournalFileBackend(str(experiment / "optuna.journal"))),
    )
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 6 and not [t for t in study.trials if t.state.name == "RUNNING"]
    assert [t.params for t in done[:3]] == [t.params for t in before]
    assert sorted(round(t.params["lr"], 12) for t in done) == sorted(
        round(v, 12) for v in table["lr"]
    )
    searcher = pickle.loads(sorted(experiment.glob("searcher-state-*.pkl"))[-1].read_bytes())
    assert type(searcher["_sampler"]).__name__ == "TPESampler"

    assert table["lr"].between(1e-5, 1e-1).all()
    assert set(table["batch_size"]) <= {16, 32, 64}
    assert not (tmp_path / "tpe" / "results_by_variant.csv").exists()  # no seeds to average
    best = json.loads((tmp_path / "tpe" / "best_config.json").read_text())
    scored = table[~table["stop_reason"].isin(["diverged", "stuck_at_chance", "error", "oom"])]
    assert best["lr"] == scored.loc[scored["best_val_loss"].idxmin(), "lr"]
    assert f"--config '{tmp_path / 'tpe' / 'best_config.json'}'" in result.stdout

    again = run_cli(
        [
            "--space",
            "lr_batch_tpe",
            "--smoke",
            "--config",
            str(tmp_path / "tpe" / "best_config.json"),
            "--storage",
            str(tmp_path),
            "--name",
            "rerun",
            "--address",
            ray_address,
        ],
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = pd.read_csv(tmp_path / "rerun" / "results.csv")
    assert len(rerun) == 1 and "grid" in again.stderr
    assert math.isclose(
        rerun.loc[0, "best_val_loss"],
        scored.loc[scored["best_val_loss"].idxmin(), "best_val_loss"],
        rel_tol=1e-4,
    )

    # the report of a searched study says which of the searched settings mattered
    from sweeps import report

    assert report.main([str(tmp_path / "tpe"), "--latency-rounds", "1"]) == 0
    page = (tmp_path / "tpe" / "report" / "report.html").read_text()
    assert "Which settings mattered" in page and "fANOVA" in page
    assert (tmp_path / "tpe" / "report" / "parallel_coordinates.png").stat().st_size > 1000
    searched = {"lr", "batch_size", "optimizer", "weight_decay", "label_smoothing"}
    assert all(key in page.split("Which settings mattered")[1] for key in searched)
    assert not (tmp_path / "tpe" / "results_by_variant.csv").exists()  # still not a grid
