"""sweeps/ensemble.py on experiment folders laid out as sweeps/run.py writes them, with small
hand-made probabilities whose ensembles can be worked out by hand; and the refusals."""
import numpy as np
import pandas as pd
import pytest

from sweeps import ensemble
from sweeps.experiment.folder import load_experiment, load_trials
from trainables.errors import UserError

VAL = ["0/v0.png", "0/v1.png", "1/v2.png", "1/v3.png"]
TEST = ["0/t0.png", "0/t1.png", "1/t2.png", "1/t3.png"]
LABELS = np.array([0, 0, 1, 1])


def write_experiment(root, trials: dict, val_ids=VAL, test_ids=TEST):
    """trials: trial_id -> (best_val_loss, val_probs, test_probs)."""
    root.mkdir(parents=True)
    split = [(p, str(label), label, part) for part, paths in (("val", VAL), ("test", TEST))
             for p, label in zip(paths, LABELS)]
    split.append(("0/x.png", "0", 0, "train"))
    pd.DataFrame(split, columns=["path", "class", "label", "split"]).to_csv(
        root / "split.csv", index=False)
    rows = []
    for trial_id, (loss, val, test) in trials.items():
        rows.append({"trial_id": trial_id, "variant": f"v{trial_id}", "stop_reason": "completed",
                     "best_epoch": 1, "best_val_loss": loss,
                     "test_acc": float(np.mean(np.argmax(test, 1) == LABELS))})
        checkpoint = root / f"small_cnn_s0_{trial_id}" / "checkpoint_000001"
        checkpoint.mkdir(parents=True)
        np.savez(checkpoint / "predictions.npz", val_probs=np.asarray(val, float),
                 val_labels=LABELS, val_ids=np.asarray(val_ids), test_probs=np.asarray(test, float),
                 test_labels=LABELS, test_ids=np.asarray(test_ids))
    pd.DataFrame(rows).to_csv(root / "results.csv", index=False)
    return root


# a: right on the first half (sure), wrong on the second (unsure); b the reverse; c 3 of 4
A = [[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]]
B = [[0.4, 0.6], [0.4, 0.6], [0.1, 0.9], [0.1, 0.9]]
C = [[0.6, 0.4], [0.6, 0.4], [0.4, 0.6], [0.6, 0.4]]


def test_ensemble_table_by_hand(tmp_path, capsys):
    root = write_experiment(tmp_path / "exp", {"c1": (0.5, C, C), "a1": (0.6, A, A),
                                                "b1": (0.7, B, B)})
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


def test_a_trial_on_another_split_is_left_out_by_default_and_refused_by_name(tmp_path, capsys):
    root = write_experiment(tmp_path / "exp", {"c1": (0.5, C, C), "a1": (0.6, A, A)})
    other = write_experiment(tmp_path / "other", {"b1": (0.7, B, B)},
                             test_ids=["0/t0.png", "0/t1.png", "1/t3.png", "1/t2.png"])
    # put the foreign trial into this experiment, as if copied over from another split
    (other / "small_cnn_s0_b1").rename(root / "small_cnn_s0_b1")
    with open(root / "results.csv", "a") as f:
        f.write("b1,vb1,completed,0.7\n")
    experiment = load_experiment(root)
    trials, refused = load_trials(experiment, strict=False)
    assert [t.trial_id for t in trials] == ["c1", "a1"]
    assert len(refused) == 1 and "trial b1: its test probabilities were made on a different " \
                                  "split" in refused[0]
    with pytest.raises(UserError, match="trial b1: its test probabilities were made on a "
                                        "different split"):
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


@pytest.mark.parametrize("command, args, needle", [
    ("ensemble.py", ["{tmp}"], "no results.csv here"),
    ("report.py", ["{tmp}"], "no results.csv here"),
    ("export.py", ["{tmp}"], "no results.csv here"),
    ("predict.py", ["{tmp}", "{tmp}/nothing"], "no spec.json"),
])
def test_each_command_ends_bad_input_in_one_line_and_exit_2(tmp_path, command, args, needle):
    import subprocess
    import sys

    from conftest import ROOT

    result = subprocess.run([sys.executable, str(ROOT / "sweeps" / command),
                             *[a.format(tmp=tmp_path) for a in args]],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert needle in result.stderr and not list(tmp_path.iterdir())
