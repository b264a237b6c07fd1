"""After a real sweep: ensembles, the HTML report (opened in headless Chromium), TensorBoard's
evaluation plots (read back with TensorBoard's reader), export and predict."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import run_cli
from sweeps import ensemble, export, predict, report
from trainables.stats import evaluation as E

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


DIGITS = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, ray_address):
    """The demo digits (1,797 real scans, 10 classes), three seeds of a small CNN for two
    epochs with tta on: quick, and far enough above chance for the numbers to mean something."""
    tmp = tmp_path_factory.mktemp("after")
    with pytest.MonkeyPatch.context() as mp:  # module scope: set the isolated cache here
        mp.setenv("VISIONSWEEP_CACHE", str(tmp / "cache"))
        result = run_cli(
            [
                "--space",
                "single",
                "--set",
                "model=small_cnn",
                "--set",
                "tta=true",
                "--max-epochs",
                "2",
                "--num-samples",
                "3",
                "--scheduler",
                "fifo",
                "--storage",
                str(tmp / "runs"),
                "--name",
                "exp",
                "--address",
                ray_address,
            ],
            cwd=tmp,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no pruning" in result.stderr
    root = tmp / "runs" / "exp"
    table = pd.read_csv(root / "results.csv")
    assert (table["epochs"] == 2).all() and (table["test_acc"] > 0.3).all()  # chance: 0.1
    return root, Path(json.loads((root / "sweep.json").read_text())["data"])


def test_result_table_has_intervals_tta_and_per_class_reports(experiment):
    root, _ = experiment
    table = pd.read_csv(root / "results.csv")
    assert (table["test_acc_low"] <= table["test_acc"]).all()
    assert (table["test_acc"] <= table["test_acc_high"]).all()
    assert (table["test_macro_f1_low"] <= table["test_macro_f1_high"]).all()
    assert table["test_acc_tta"].between(0, 1).all()
    assert "[" in (root / "results.md").read_text()  # 'value [low, high]' in the markdown
    reports = sorted(root.glob("*/checkpoint_*/test_report.json"))
    assert len(reports) == 3
    saved = json.loads(reports[0].read_text())
    assert [c["class"] for c in saved["classes"]] == DIGITS
    assert sum(map(sum, saved["confusion"])) == sum(c["support"] for c in saved["classes"])


def test_ensembles_of_a_real_sweep(experiment, capsys):
    root, _ = experiment
    assert ensemble.main([str(root), "--top", "3"]) == 0
    table = pd.read_csv(root / "ensembles.csv")
    assert len(table) == 5 and table["test_acc"].between(0, 1).all()
    assert table["ensemble"].str.startswith("stacking, top 3").sum() == 1
    # the soft vote of the calibrated members, recomputed from the saved probabilities
    from trainables.stats.calibration import fit_temperature, scaled

    split = pd.read_csv(root / "split.csv")
    labels = split.loc[split["split"] == "test", "label"].to_numpy()
    val_labels = split.loc[split["split"] == "val", "label"].to_numpy()
    saved = [np.load(p) for p in sorted(root.glob("*/checkpoint_*/predictions.npz"))]
    # the trials ran with tta: each member is the mean over its views, as its export predicts
    probs = [
        scaled(s["test_probs_tta"], fit_temperature(s["val_probs_tta"], val_labels)) for s in saved
    ]
    soft = E.accuracy(labels, E.soft_vote(probs).argmax(1))
    assert table.set_index("ensemble").loc["soft vote, top 3", "test_acc"] == pytest.approx(soft)
    assert "McNemar" in capsys.readouterr().out


def test_report_renders_in_a_real_browser_and_tensorboard_gets_the_evaluation(experiment, tmp_path):
    root, _ = experiment
    sweep_files = {name: (root / name).read_bytes() for name in ("results.csv", "results.md")}
    assert report.main([str(root), "--latency-rounds", "2"]) == 0
    out = root / "report"
    # an after-sweep reader never edits what the sweep wrote
    assert all((root / name).read_bytes() == data for name, data in sweep_files.items())
    figures = (
        "learning_curves",
        "test_accuracy",
        "parallel_coordinates",
        "pareto",
        "per_class",
        "hardest",
        "reliability",
    )
    for name in ("report.html", *(f"{f}.png" for f in figures)):
        assert (out / name).stat().st_size > 1000, name
    assert len(list(out.glob("confusion_*.png"))) == 2
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(figures) + 2 and "McNemar" in page
    for section in (
        "Which settings mattered",
        "What each variant costs to deploy",
        "Where each variant fails",
        "interleaved rounds",
        "Calibration of the best trial",
        "Prediction sets (split conformal",
    ):
        assert section in page, section
    assert "coverage: 9" in page and "per class" in page  # each digit's coverage, both ways
    table = pd.read_csv(out / "costs.csv")
    assert all(str(t) in page for t in table["trial_id"])
    # the costs went into the report's table: one architecture, so one latency for all
    assert (table["params"] > 0).all() and (table["flops"] > 0).all()
    assert table["latency_b1_ms"].nunique() == 1 and (table["latency_b1_ms"] > 0).all()
    assert table["latency_b32_ms"].iloc[0] > table["latency_b1_ms"].iloc[0]
    assert "latency_b1_ms" in page

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    best = table.loc[table["test_acc"].idxmax(), "trial_id"]
    trial_dir = next(root.glob(f"*_{best}"))
    events = EventAccumulator(str(trial_dir), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    assert "test/confusion_matrix" in events.Tags()["images"]
    image = events.Images("test/confusion_matrix")[0]
    assert image.width > 100 and image.height > 100
    curves = [t for t in events.Tags()["tensors"] if t.startswith("test/pr_curve/")]
    assert sorted(curves) == [f"test/pr_curve/{d}" for d in DIGITS]
    pr = np.asarray(events.Tensors("test/pr_curve/7")[0].tensor_proto.float_val)
    assert pr.size > 0 and np.isfinite(pr).all()
    # again, latency in ONNX Runtime (the export's runtime) this time
    assert (
        report.main(
            [
                str(root),
                "--compare",
                str(table["trial_id"].iloc[-1]),
                best,
                "--runtime",
                "onnx",
                "--latency-rounds",
                "1",
                *(["--pdf", "--browser", CHROMIUM] if CHROMIUM else []),
            ]
        )
        == 0
    )
    assert "latency: ONNX Runtime" in (out / "report.html").read_text()
    onnx = pd.read_csv(out / "costs.csv")
    assert (onnx["latency_b1_ms"] > 0).all() and onnx["latency_b1_ms"].nunique() == 1
    assert len(list(root.glob("*/events.out.tfevents.*.evaluation"))) == 1  # replaced, not added
    assert str(table["trial_id"].iloc[-1]) in (out / "report.html").read_text().split("McNemar")[1]

    if CHROMIUM is None:
        pytest.skip("Chromium not installed (apt-get install chromium); .ci/run installs it")
    flags = [  # headless and offline, as report.py --pdf runs it
        *report.BROWSER_FLAGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,1600",
    ]
    url = (out / "report.html").as_uri()
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
    ).stdout
    assert '<table class="dataframe ranked">' in dom and best in dom  # as the browser parsed it
    assert dom.count("<img") == len(figures) + 2
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", url], capture_output=True, timeout=120
    )
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (1600, 1280) and pixels.std() > 10  # not a blank page
    assert (pixels < 128).mean() > 0.01  # text, table rules and plots drawn in dark ink
    # the PDF of the same page (report.py --pdf, the ONNX run above), opened and read back
    from pypdf import PdfReader

    pdf = PdfReader(out / "report.pdf")
    assert len(pdf.pages) >= 2
    assert sum(len(page.images) for page in pdf.pages) == len(figures) + 2
    text = " ".join(page.extract_text() for page in pdf.pages)
    assert "McNemar" in text and "Which settings mattered" in text and best in text


def test_export_and_predict_reproduce_the_trial_test_accuracy(experiment, tmp_path):
    root, data = experiment
    out = tmp_path / "export"
    assert export.main([str(root), "--out", str(out)]) == 0
    spec = json.loads((out / "spec.json").read_text())
    table = pd.read_csv(root / "results.csv").set_index("trial_id")
    row = table.loc[spec["source"]["trial_id"]]
    assert row["best_val_loss"] == table["best_val_loss"].min()
    assert spec["class_names"] == DIGITS and spec["preprocess"]["image_size"] == 32
    # predict the experiment's test images from their files, as a user would
    split = pd.read_csv(root / "split.csv")
    test = split[split["split"] == "test"]
    images = tmp_path / "test_images"
    for path in test["path"]:
        (images / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data / path, images / path)
    csv = tmp_path / "pred.csv"
    # the trial had tta on: the export averages the same views, by default
    assert spec["tta"] == "flip"
    assert predict.main([str(out), str(images), "--out", str(csv)]) == 0
    predicted = pd.read_csv(csv).set_index("path").loc[test["path"], "predicted"]
    accuracy = (predicted.to_numpy() == test["class"].to_numpy()).mean()
    assert accuracy == pytest.approx(row["test_acc_tta"])
    assert predict.main([str(out), str(images), "--out", str(csv), "--tta", "off"]) == 0
    predicted = pd.read_csv(csv).set_index("path").loc[test["path"], "predicted"]
    assert (predicted.to_numpy() == test["class"].to_numpy()).mean() == pytest.approx(
        row["test_acc"]
    )
    # calibrated by the temperature the trial fit on validation (the table's own), and the
    # ONNX model with prediction sets: the uncalibrated softmax, rescaled, is what it gives
    temperature = spec["calibration"]["temperature"]
    assert temperature == pytest.approx(row["temperature"], rel=1e-3)
    assert row["test_ece"] >= 0 and row["test_ece_calibrated"] >= 0
    assert len(spec["calibration"]["scores"]) == (split["split"] == "val").sum()
    columns = [f"p_{d}" for d in DIGITS]
    assert predict.main([str(out), str(images), "--out", str(csv), "--uncalibrated"]) == 0
    raw = pd.read_csv(csv).set_index("path").loc[test["path"], columns].to_numpy()
    assert (
        predict.main(
            [str(out), str(images), "--out", str(csv), "--runtime", "onnx", "--coverage", "0.9"]
        )
        == 0
    )
    sets = pd.read_csv(csv, dtype={"set": str}).set_index("path").loc[test["path"]]
    from trainables.stats.calibration import scaled

    assert np.allclose(sets[columns].to_numpy(), scaled(raw, temperature), atol=1e-5)
    covered = [str(c) in s.split(" | ") for c, s in zip(test["class"], sets["set"])]
    assert np.mean(covered) >= 0.8 and (sets["set_size"] >= 1).all()  # 0.9 in expectation
    assert sets["set_size"].mean() < 10
    # per class (Mondrian): each class's thresholds from its own validation images
    val_counts = split[split["split"] == "val"]["class"].astype(str).value_counts()
    assert [len(s) for s in spec["calibration"]["class_scores"]] == [
        val_counts.get(d, 0) for d in DIGITS
    ]
    assert (
        predict.main([str(out), str(images), "--out", str(csv), "--coverage", "0.9", "--per-class"])
        == 0
    )
    mondrian = pd.read_csv(csv, dtype={"set": str}).set_index("path").loc[test["path"]]
    from trainables.stats.calibration import threshold

    cut = {d: threshold(s, 0.9) for d, s in zip(DIGITS, spec["calibration"]["class_scores"])}
    for _, row in mondrian.iterrows():
        chosen = [d for d in DIGITS if row[f"p_{d}"] >= 1 - cut[d] - 1e-6]
        assert str(row["set"]).split(" | ") == chosen or (not chosen and row["set_size"] == 0)
