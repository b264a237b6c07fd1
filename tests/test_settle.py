"""Settling which variant is best: folds, out-of-fold scores, the corrected pairwise tests,
the confirmation command, and trials whose numbers do not depend on their CPU share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import HEAD_ENV, ROOT, make_image_folder, run_cli

pytestmark = pytest.mark.integration

SMALL = ["--set", "model=small_cnn", "--set", "image_size=32"]


def test_folds_are_stratified_disjoint_keep_copies_together_and_reload(tmp_path):
    from trainables import data as D

    root = make_image_folder(tmp_path / "images", per_class=10)
    for i in range(3):  # three copies of one red image, and one of a blue one
        (root / "red" / f"copy_{i}.png").write_bytes((root / "red" / "img_001.png").read_bytes())
    (root / "blue" / "copy.png").write_bytes((root / "blue" / "img_003.png").read_bytes())
    handle, report = D.prepare(D.discover(root), 37, tmp_path / "cache", progress=False, folds=4)
    folds = np.asarray(handle.folds)
    labels = np.asarray(handle.labels)
    paths = [handle.files[r] for r in handle.rows]
    assert handle.fold_count == 4 and len(folds) == len(paths) == 34
    # stratified: each class spread over the folds as evenly as its copies allow
    for label in range(3):
        sizes = np.bincount(folds[labels == label], minlength=4)
        assert sizes.max() - sizes.min() <= 3, (label, sizes)  # red's 4 copies are one group
    fold_of = dict(zip(paths, folds))
    copies = ("red/img_001.png", *(f"red/copy_{i}.png" for i in range(3)))
    assert len({fold_of[p] for p in copies}) == 1
    assert fold_of["blue/img_003.png"] == fold_of["blue/copy.png"]
    red = handle.class_names.index("red")
    assert report["folds"]["red"] == np.bincount(folds[labels == red], minlength=4).tolist()
    # each fold tests on itself and validates on the next: every image tested once and
    # validated once over the folds, never both in one fold
    tested, validated = np.zeros(len(paths), int), np.zeros(len(paths), int)
    for fold in range(4):
        view = handle.for_fold(fold)
        test, val = view.indices("test"), view.indices("val")
        assert set(folds[test]) == {fold} and set(folds[val]) == {(fold + 1) % 4}
        assert not set(test) & set(val)
        tested[test] += 1
        validated[val] += 1
    assert (tested == 1).all() and (validated == 1).all()
    # split.csv records the folds, and --split-file with --folds reuses them exactly
    (tmp_path / "split.csv").write_text(D.split_csv(handle, report))
    assert pd.read_csv(tmp_path / "split.csv")["fold"].tolist() == folds.tolist()
    source = D.apply_split_file(D.discover(root), tmp_path / "split.csv")
    again, _ = D.prepare(source, 37, tmp_path / "cache", progress=False, folds=4)
    assert again.folds == handle.folds and again.splits == handle.splits
    from trainables.core.errors import UserError

    with pytest.raises(UserError, match="pass folds=4"):
        D.prepare(source, 37, tmp_path / "cache", progress=False)


def test_holm_against_a_hand_computed_case():
    from sweeps.analysis.folds import holm

    # sorted: 0.01 x 4 = 0.04, 0.03 x 3 = 0.09, 0.04 x 2 = 0.08 -> 0.09 (monotone), 0.20 x 1
    reject, adjusted = holm([0.01, 0.04, 0.03, 0.20])
    assert adjusted == pytest.approx([0.04, 0.09, 0.09, 0.20])
    assert reject == [True, False, False, False]
    assert holm([]) == ([], [])


def test_the_verdict_names_what_choosing_by_validation_loss_gives_up():
    from sweeps.analysis.folds import verdict

    def ranked(*rows):  # in the order of validation loss
        names = ["variant", "oof_acc", "oof_acc_low", "oof_acc_high", "images"]
        return pd.DataFrame([dict(zip(names, (*row, 2624))) for row in rows])

    def pairs(*rows):
        names = ["a", "b", "seeds", "only_a", "only_b", "p", "p_holm", "separated"]
        return pd.DataFrame([dict(zip(names, row)) for row in rows])

    # as on ELPV: the best by validation loss leads the runner-up, while the third and
    # fourth are more accurate, two of them distinguishably
    table = ranked(
        ("wd0.1", 0.775, 0.759, 0.791),
        ("wd0.3", 0.765, 0.748, 0.780),
        ("wd0.03", 0.785, 0.769, 0.800),
        ("wd0.01", 0.787, 0.771, 0.803),
        ("wd1", 0.780, 0.76, 0.79),
    )
    tests = pairs(
        ("wd0.1", "wd0.3", 1, 44, 16, 0.0005, 0.002, True),
        ("wd0.1", "wd0.03", 1, 23, 49, 0.003, 0.0096, True),
        ("wd0.01", "wd0.1", 1, 76, 44, 0.004, 0.0096, True),
        ("wd0.1", "wd1", 1, 30, 40, 0.2, 0.4, False),
    )
    line = verdict(table, tests)
    assert line.startswith("wd0.1 is best (out-of-fold accuracy 0.7750")
    assert "its lead over wd0.3 is distinguishable" in line
    assert line.endswith(
        "; more accurate out of fold than wd0.1, distinguishably: wd0.03 (0.7850, "
        "Holm-corrected p = 0.0096), wd0.01 (0.7870, Holm-corrected p = 0.0096)"
    )
    assert "wd1" not in line.split("distinguishably:")[-1]  # not separated: not named
    # nothing more accurate and separated: the line is as before
    assert verdict(table.iloc[:2], tests.iloc[:1]).endswith("over 1 pair(s), alpha 0.05)")


def _confirm(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore", **HEAD_ENV)
    return subprocess.run(
        [sys.executable, str(ROOT / "sweeps" / "confirm.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_folded_sweep_scores_every_image_once_and_confirm_ends_with_a_verdict(
    tmp_path, ray_address, monkeypatch
):
    make_image_folder(tmp_path / "images", per_class=6)
    runs = tmp_path / "runs"
    # Ctrl-C once four trials have finished, one at a time and each variant's folds in
    # turn: the first variant has all three folds, the second not (two at a time, one slow
    # start once let the other slot finish trials of both variants first)
    monkeypatch.setenv("VISIONSWEEP_FAULTS", "interrupt_driver_after=4")
    stopped = run_cli(
        [
            "--space",
            "single",
            *SMALL,
            "--set",
            "lr=[0.003,0.00003]",
            "--max-concurrent",
            "1",
            "--data",
            "images",  # relative: confirm runs from another folder below
            "--max-epochs",
            "1",
            "--folds",
            "3",
            "--storage",
            str(runs),
            "--name",
            "cv",
            "--address",
            ray_address,
        ],
        cwd=tmp_path,
    )
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    experiment = runs / "cv"
    table = pd.read_csv(experiment / "results.csv")
    folds_done = table[table["stop_reason"] == "completed"].groupby("variant")["fold"].nunique()
    complete = sorted(folds_done[folds_done == 3].index)
    assert len(complete) == 1 and len(table["variant"].unique()) == 2, table
    # the stopped sweep still settles the variant whose folds all finished
    assert sorted(pd.read_csv(experiment / "results_oof.csv")["variant"]) == complete
    assert "1 of 2 variant(s) have a result on every fold" in stopped.stderr
    assert "left out:" not in stopped.stderr
    monkeypatch.delenv("VISIONSWEEP_FAULTS")
    done = run_cli(["--resume", str(experiment), "--address", ray_address], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    split = pd.read_csv(experiment / "split.csv")
    assert sorted(split["fold"].value_counts().tolist()) == [6, 6, 6]
    table = pd.read_csv(experiment / "results.csv")
    assert sorted(table["fold"]) == [0, 0, 1, 1, 2, 2]  # every variant once per fold
    oof = pd.read_csv(experiment / "results_oof.csv")
    assert (oof["images"] == 18).all() and len(oof) == 2
    # the out-of-fold accuracy, recomputed from the probabilities the trials saved
    for _, row in oof.iterrows():
        correct = 0
        for trial_dir in experiment.glob(f"{row['variant']}_s0_f*"):
            saved = np.load(sorted(trial_dir.glob("checkpoint_*"))[-1] / "predictions.npz")
            correct += int((saved["test_probs"].argmax(1) == saved["test_labels"]).sum())
        assert row["oof_acc"] == pytest.approx(correct / 18)
        # per-class recall out of fold: weighted by the classes' sizes, it is the accuracy
        sizes = split.groupby("class")["path"].count()
        assert sum(row[f"recall_{c}"] * n for c, n in sizes.items()) / 18 == pytest.approx(
            row["oof_acc"]
        )
        assert row["oof_acc_low"] < row["oof_acc"] or row["oof_acc"] == 0
    assert "out-of-fold accuracy" in done.stdout
    # threads not set: each trial's CPU share (the session head's 2 CPUs, one trial at a
    # time), pinned by the driver and recorded in every trial's config
    assert "2 thread(s) per trial" in stopped.stderr
    record = next(experiment.glob("*/checkpoint_*/trial.json"))
    assert json.loads(record.read_text())["config"]["threads"] == 2
    assert (experiment / "verdict.md").read_text().count("small_cnn-") >= 2

    from sweeps import ensemble, report
    from sweeps.driver.spec import SweepSpec, resumed

    assert ensemble.main([str(experiment), "--top", "2"]) == 0
    pooled = pd.read_csv(experiment / "ensembles.csv")
    assert (pooled["images"] == 18).all() and pooled["ensemble"].str.contains("pooled").all()
    assert report.main([str(experiment), "--latency-rounds", "0", "--fold", "1"]) == 0
    page = (experiment / "report" / "report.html").read_text()
    assert "Which variant is best, out of fold" in page and "fold 1 of 3" in page
    # a resumed folded sweep keeps its folds and its own split.csv (which holds them)
    again = resumed(SweepSpec(resume=str(experiment)))
    assert again.folds == 3 and again.scheduler == "fifo"
    assert again.split_file == f"{experiment}/split.csv"

    options = ["--top", "2", "--name", "checked", "--address", ray_address]
    # more folds than a class has images: refused, and no folder is left to block the fix
    refused = _confirm([str(experiment), "--folds", "7", *options], cwd=runs)
    assert refused.returncode == 2 and not (runs / "checked").exists(), refused.stderr[-2000:]
    # from another folder than the sweep's (its --data was relative): the sweep's own root
    confirmed = _confirm([str(experiment), "--folds", "3", *options], cwd=runs)
    assert confirmed.returncode == 0, confirmed.stderr[-3000:]
    verdict = confirmed.stdout.strip().splitlines()[-2]
    assert "distinguishable" in verdict
    assert "Holm-corrected" in verdict and "over 1 pair(s)" in verdict
    folder = runs / "checked"
    ranked = pd.read_csv(folder / "results_oof.csv")  # in the order of validation loss
    if ranked["oof_acc"].iloc[0] >= ranked["oof_acc"].iloc[1]:
        assert " is best (out-of-fold accuracy " in verdict and "its lead over" in verdict
    else:  # first by validation loss, less accurate: never called a lead
        assert "ranks first by validation loss" in verdict and "lead" not in verdict
    # the same command again: the confirmation goes on from its folder (here: all done),
    # to the same verdict; another plan under its name is refused in one line
    again = _confirm([str(experiment), "--folds", "3", *options], cwd=runs)
    assert again.returncode == 0 and "resuming 2 variant(s)" in again.stderr, again.stderr[-3000:]
    assert again.stdout.strip().splitlines()[-2] == verdict
    other = _confirm([str(experiment), "--folds", "4", *options], cwd=runs)
    assert other.returncode == 2 and "holds a confirmation of another plan" in other.stderr
    assert (folder / "ranking.png").stat().st_size > 1000
    record = json.loads((folder / "confirm.json").read_text())
    assert set(record["variants"]) == set(oof["variant"])
    # both variants ran on the same folds, with the configuration their trials recorded
    folds = [
        pd.read_csv(f / "split.csv")["fold"].tolist()
        for f in sorted(folder.iterdir())
        if f.is_dir()
    ]
    assert len(folds) == 2 and folds[0] == folds[1]
    for variant, entry in record["variants"].items():
        assert entry["config"]["lr"] == float(variant.split("-", 1)[1])


def _epochs(experiment: Path, seed: int) -> pd.DataFrame:
    trial_dir = next(experiment.glob(f"*_s{seed}_*"))
    return pd.read_csv(trial_dir / "progress.csv")[["epoch", "train_loss", "val_loss"]]


def test_pinned_threads_give_bit_identical_epochs_under_different_cpu_shares(tmp_path, ray_address):
    images = make_image_folder(tmp_path / "images", per_class=16)
    common = [
        "--space",
        "single",
        *SMALL,
        "--data",
        str(images),
        "--max-epochs",
        "3",
        "--set",
        "threads=1",
        "--storage",
        str(tmp_path / "runs"),
        "--address",
        ray_address,
    ]
    alone = run_cli([*common, "--name", "alone", "--cpus-per-trial", "2"], cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    shared = run_cli(
        [*common, "--name", "shared", "--cpus-per-trial", "1", "--num-samples", "2"], cwd=tmp_path
    )  # seed 0 beside seed 1
    assert shared.returncode == 0, shared.stderr[-3000:]
    first = _epochs(tmp_path / "runs" / "alone", 0)
    second = _epochs(tmp_path / "runs" / "shared", 0)
    assert len(first) == 3 and first.equals(second)  # bit for bit, every epoch
    # the threads are part of the trial's record
    record = next((tmp_path / "runs" / "shared").glob("*_s0_*/checkpoint_*/trial.json"))
    assert json.loads(record.read_text())["config"]["threads"] == 1
    sweep = json.loads((tmp_path / "runs" / "shared" / "sweep.json").read_text())
    assert sweep["plan"]["threads"] == 1
