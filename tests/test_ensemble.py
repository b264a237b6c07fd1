"""sweeps/ensemble.py on experiment folders laid out as sweeps/run.py writes them, with small
hand-made probabilities whose ensembles can be worked out by hand; and the refusals."""

import pandas as pd
import pytest

from helpers import A, B, C, write_experiment
from sweeps import ensemble
from sweeps.experiment.folder import load_experiment, load_trials
from trainables.core.errors import UserError


def test_ensemble_table_by_hand(tmp_path, capsys):
    root = write_experiment(
        tmp_path / "exp", {"c1": (0.5, C, C), "a1": (0.6, A, A), "b1": (0.7, B, B)}
    )
    # the trials' own probabilities, as worked out below (calibration has its own tests)
    assert ensemble.main([str(root), "--top", "3", "--steps", "3", "--uncalibrated"]) == 0
    table = pd.read_csv(root / "ensembles.csv").set_index("ensemble")
    best = table.loc["best single (lowest val loss)"]
    assert best["members"] == "vc1[c1]" and best["test_acc"] == 0.75
    # soft vote of the three: means [.633,.367] [.633,.367] [.367,.633] [.433,.567] -> 4/4
    soft = table.loc["soft vote, top 3"]
    assert soft["test_acc"] == 1.0 and soft["weights"] == "1 1 1"
    # hard vote: votes (c,a,b) row0 0,0,1 -> 0; row1 same; row2 1,0,1 -> 1; row3 0,0,1 -> 0
    assert table.loc["hard vote, top 3", "test_acc"] == 0.75
    # greedy (worked out in test_evaluation): c, then b, then a
    greedy = table.loc["greedy selection (3 picks)"]
    assert greedy["members"] == "vc1[c1] va1[a1] vb1[b1]" and greedy["test_acc"] == 1.0
    # McNemar soft vote vs c: one image (row 3) only the ensemble got right -> exact p = 1
    assert (soft["mcnemar_only_ensemble"], soft["mcnemar_only_single"]) == (1, 0)
    assert soft["mcnemar_p"] == pytest.approx(1.0)
    out = capsys.readouterr().out
    assert "McNemar soft vote, top 3 vs best single: 1 image only" in out
    assert (root / "ensembles.md").read_text().startswith("# Ensembles")


def test_experiments_on_one_split_are_ensembled_as_one_pool(tmp_path, capsys):
    # the trials of test_ensemble_table_by_hand, split over two experiments (a probe study
    # and a fine-tuning study, say): the same ensembles, members named by their experiment
    one = write_experiment(tmp_path / "probe", {"c1": (0.5, C, C)})
    two = write_experiment(tmp_path / "tuned", {"a1": (0.6, A, A), "b1": (0.7, B, B)})
    out = tmp_path / "both"
    args = [str(one), str(two), "--out", str(out), "--top", "3", "--steps", "3"]
    assert ensemble.main([*args, "--uncalibrated"]) == 0
    table = pd.read_csv(out / "ensembles.csv").set_index("ensemble")
    assert table.loc["best single (lowest val loss)", "members"] == "probe/vc1[c1]"
    assert table.loc["soft vote, top 3", "test_acc"] == 1.0
    assert table.loc["hard vote, top 3", "test_acc"] == 0.75
    greedy = table.loc["greedy selection (3 picks)"]
    assert greedy["members"] == "probe/vc1[c1] tuned/va1[a1] tuned/vb1[b1]"
    assert "Of the trials of" in (out / "ensembles.md").read_text()
    assert not (one / "ensembles.csv").exists() and not (two / "ensembles.csv").exists()
    # refused in one line, nothing written: no --out, --trials, a folder twice, a copy, and
    # an experiment on another split
    other = write_experiment(tmp_path / "other", {"b2": (0.7, B, B)})
    split = other / "split.csv"
    split.write_text(split.read_text().replace("1/t3.png", "1/t9.png"))  # one other image
    copy = write_experiment(tmp_path / "copy", {"c1": (0.5, C, C)})
    for bad, needle in (
        ([str(one), str(two)], "say where their table goes with --out"),
        ([*args, "--trials", "c1"], "--trials names one experiment's trials"),
        ([str(one), str(one), "--out", str(tmp_path / "x")], "passed twice"),
        ([str(one), str(copy), "--out", str(tmp_path / "x")], "trial c1 is in"),
        ([str(one), str(other), "--out", str(tmp_path / "x")], "its split differs from"),
    ):
        with pytest.raises(UserError, match=needle):
            ensemble.main(bad)
    assert not (tmp_path / "x" / "ensembles.csv").exists()


def test_a_trial_on_another_split_is_left_out_by_default_and_refused_by_name(tmp_path, capsys):
    root = write_experiment(tmp_path / "exp", {"c1": (0.5, C, C), "a1": (0.6, A, A)})
    other = write_experiment(
        tmp_path / "other",
        {"b1": (0.7, B, B)},
        test_ids=["0/t0.png", "0/t1.png", "1/t3.png", "1/t2.png"],
    )
    # put the foreign trial into this experiment, as if copied over from another split
    (other / "small_cnn_s0_b1").rename(root / "small_cnn_s0_b1")
    with open(root / "results.csv", "a") as f:
        f.write("b1,vb1,completed,0.7\n")
    experiment = load_experiment(root)
    trials, refused = load_trials(experiment, strict=False)
    assert [t.trial_id for t in trials] == ["c1", "a1"]
    assert (
        len(refused) == 1
        and "trial b1: its test probabilities were made on a different split" in refused[0]
    )
    with pytest.raises(
        UserError, match="trial b1: its test probabilities were made on a different split"
    ):
        ensemble.main([str(root), "--trials", "c1", "b1"])
    assert not (root / "ensembles.csv").exists()


def test_missing_probabilities_and_bad_folders_are_one_line_errors(tmp_path):
    root = write_experiment(tmp_path / "exp", {"c1": (0.5, C, C), "a1": (0.6, A, A)})
    (root / "small_cnn_s0_a1" / "checkpoint_000001" / "predictions.npz").unlink()
    with pytest.raises(UserError, match="trial a1: no saved probabilities"):
        ensemble.main([str(root), "--trials", "c1", "a1"])
    with pytest.raises(UserError, match="1 trial\\(s\\) with usable probabilities"):
        ensemble.main([str(root)])
    with pytest.raises(UserError, match="no results.csv here"):
        ensemble.main([str(tmp_path)])
    with pytest.raises(UserError, match="not in .*results.csv"):
        ensemble.main([str(root), "--trials", "c1", "zz"])


@pytest.mark.parametrize(
    "command, args, needle",
    [
        ("ensemble.py", ["{tmp}"], "no results.csv here"),
        ("report.py", ["{tmp}"], "no results.csv here"),
        ("export.py", ["{tmp}"], "no results.csv here"),
        ("predict.py", ["{tmp}", "{tmp}/nothing"], "no spec.json"),
    ],
)
def test_each_command_ends_bad_input_in_one_line_and_exit_2(tmp_path, command, args, needle):
    import subprocess
    import sys

    from helpers import ROOT

    result = subprocess.run(
        [sys.executable, str(ROOT / "sweeps" / command), *[a.format(tmp=tmp_path) for a in args]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert needle in result.stderr and not list(tmp_path.iterdir())


def test_a_trial_run_with_test_time_views_is_read_as_its_export_predicts(tmp_path):
    """A trial with ``tta`` saved its views' mean beside the plain probabilities; the
    ensembles, the out-of-fold scores and the report read the mean, as its export (which
    averages the same views) predicts, not the single view."""
    import numpy as np

    from sweeps.experiment.folder import load_trial

    root = write_experiment(tmp_path / "exp", {"a1": (0.6, A, A), "c1": (0.5, C, C)})
    saved = root / "small_cnn_s0_a1" / "checkpoint_000001" / "predictions.npz"
    with np.load(saved) as npz:
        arrays = dict(npz)
    np.savez(saved, **arrays, val_probs_tta=np.asarray(B, float), test_probs_tta=np.asarray(B))
    experiment = load_experiment(root)
    viewed, plain = load_trial(experiment, "a1"), load_trial(experiment, "c1")
    assert np.array_equal(viewed.test_probs, B) and np.array_equal(viewed.val_probs, B)
    assert np.array_equal(plain.test_probs, C)  # no views: its own probabilities
    # the mean's shape is checked as the plain probabilities' is
    np.savez(saved, **arrays, val_probs_tta=np.ones((4, 3)) / 3, test_probs_tta=np.asarray(B))
    with pytest.raises(UserError, match=r"trial a1: val probabilities of shape \(4, 3\)"):
        load_trial(experiment, "a1")
