"""The report's answers beyond the ranking, each a section of the page: which settings
mattered, what each variant costs to deploy, where each variant fails."""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from sweeps.analysis import insight, plots
from sweeps.experiment.files import COSTS_CSV
from sweeps.experiment.folder import Experiment, load_trial
from sweeps.experiment.storage import write_atomic
from trainables.core import metrics as M
from trainables.core.csvcells import guarded
from trainables.core.errors import UserError

Section = tuple[str, str]  # (title, HTML)


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(classes="ranked", border=0, na_rep="", float_format=lambda v: f"{v:.3g}")


def settings(experiment: Experiment, out: Path, image: Callable[[Path], str]) -> Section:
    """Hyperparameter importance (fANOVA, PED-ANOVA) and parallel coordinates."""
    found = insight.importance(experiment)
    parts = [f"<p>{html.escape(found.note)}</p>"]
    if not found.table.empty:
        parts.insert(0, _table(found.table))
    keys = found.keys or [k for k in experiment.varied if k in experiment.table]
    if plots.parallel_coordinates(
        experiment.results(), keys, M.BEST_VAL_LOSS, out / "parallel_coordinates.png"
    ):
        parts.append(image(out / "parallel_coordinates.png"))
    return "Which settings mattered", "\n".join(parts)


def costs(
    experiment: Experiment,
    out: Path,
    image: Callable[[Path], str],
    rounds: int,
    threads: int,
    runtime: str = "torch",
) -> tuple[Section, str, pd.DataFrame]:
    """Size, FLOPs and measured latency per variant, the accuracy-cost Pareto plots; the
    table with the latency columns is written to ``out``'s costs.csv (the sweep's own
    results.csv is the sweep's, never rewritten here). Returns the section, a line, and the
    table with its costs."""
    table = experiment.table
    note = "latency not measured (--latency-rounds 0)"
    if rounds:
        measured, note = insight.latencies(
            experiment, rounds=rounds, threads=threads, runtime=runtime
        )
        table = table.drop(columns=[M.LATENCY_B1, M.LATENCY_B32], errors="ignore").merge(
            measured, on="trial_id", how="left"
        )
    write_atomic(out / COSTS_CSV, guarded(table).to_csv(index=False))
    panels = [
        (insight.pareto(table, cost), cost, label)
        for cost, label in (
            (M.LATENCY_B1, "CPU latency, batch 1 (ms)"),
            (M.WEIGHTS_MB, "weights (MB)"),
            (M.FLOPS, "FLOPs per image"),
        )
        if cost in table and table[cost].notna().any()
    ]
    columns = [
        "variant",
        M.TEST_ACC,
        M.TEST_ACC_LOW,
        M.TEST_ACC_HIGH,
        *M.COSTS,
        M.LATENCY_B1,
        M.LATENCY_B32,
        "front",
    ]
    parts = [
        f"<p>{html.escape(note)}. Parameters, FLOPs (per image, at the trial's input "
        "size) and weights as each trial reported them.</p>"
    ]
    if panels:
        plots.pareto_figure(panels, out / "pareto.png")
        best = panels[0][0]
        parts.append(_table(best[[c for c in columns if c in best]].set_index("variant")))
        parts.append(image(out / "pareto.png"))
    return ("What each variant costs to deploy", "\n".join(parts)), note, table


def failures(
    experiment: Experiment, out: Path, image: Callable[[Path], str], count: int = 12
) -> tuple[Section, list[str]]:
    """Per-class recall and F1 by variant, and the test images most trials get wrong."""
    parts, lines = [], []
    recall, f1 = insight.per_class(experiment)
    if not recall.empty:
        plots.heatmaps([(recall, "recall on test"), (f1, "F1 on test")], out / "per_class.png")
        parts.append("<p>Each cell: the variant's mean over its seeds.</p>")
        parts.append(image(out / "per_class.png"))
    probabilities = {}
    for trial_id in experiment.results()["trial_id"].astype(str):
        try:
            probabilities[trial_id] = load_trial(experiment, trial_id).test_probs
        except UserError as error:
            lines.append(f"left out of the hardest images: {error}")
    hard = insight.hardest(experiment, probabilities, count)
    if hard:
        from trainables.data import decode_image

        shown, captions = [], []
        for item in hard:
            try:
                shown.append(decode_image(Path(experiment.data_root) / item.path, 128))
            except OSError:
                continue  # moved or deleted since the sweep: listed below all the same
            captions.append(
                f"{item.label}, called {item.mistaken_for}\nby {item.wrong} of {item.trials} trials"
            )
        if shown:
            plots.thumbnails(shown, captions, out / "hardest.png")
            parts.append(image(out / "hardest.png"))
        parts.append(_table(pd.DataFrame([item.__dict__ for item in hard])))
    return ("Where each variant fails", "\n".join(parts) or "<p>no test report saved</p>"), lines


def calibration(experiment: Experiment, trial, out: Path, image: Callable[[Path], str]) -> Section:
    """The trial's reliability diagram on test, before and after the temperature it fit on
    validation, with the expected calibration error of each."""
    from trainables.stats import calibration as C

    found = C.calibrate(
        trial.val_probs, experiment.val_labels, trial.test_probs, experiment.test_labels
    )
    temperature, eces = found["temperature"], (found["ece"], found["ece_calibrated"])
    before = C.reliability(trial.test_probs, experiment.test_labels)
    after = C.reliability(C.scaled(trial.test_probs, temperature), experiment.test_labels)
    plots.reliability_figure(before, after, temperature, eces, out / "reliability.png")
    text = (
        f"<p>{html.escape(trial.variant)} [{html.escape(trial.trial_id)}]: temperature "
        f"{temperature:.3f}, fit on the validation split; expected calibration error on "
        f"test {eces[0]:.4f} before, {eces[1]:.4f} after (15 confidence bins). Exports "
        "and predictions use the calibrated probabilities.</p>"
    )
    sets = set_coverage(
        C.scaled(trial.val_probs, temperature),
        experiment.val_labels,
        C.scaled(trial.test_probs, temperature),
        experiment.test_labels,
        experiment.class_names,
    )
    text_sets = (
        "<p>Prediction sets (split conformal, LAC, calibrated on validation) on the "
        "test split: how often each level's sets held the true class, over all "
        "images and per class, and how many classes they named on average; "
        "calibrated over all classes (predict --coverage) and per class "
        "(--per-class).</p>" + _table(sets)
    )
    return (
        "Calibration of the best trial (test split)",
        text + image(out / "reliability.png") + text_sets,
    )


SET_LEVELS = (0.8, 0.9, 0.95)
CLASS_COLUMNS_UP_TO = 12  # classes up to which each class's coverage gets a column


def set_coverage(
    val_probs, val_labels, test_probs, test_labels, class_names: list[str]
) -> pd.DataFrame:
    """Empirical coverage and mean size of the prediction sets on test, per level, both
    ways of calibrating them; each class's coverage (or, for many classes, the lowest)."""
    import numpy as np

    from trainables.stats import calibration as C

    test_labels = np.asarray(test_labels)
    per_class = {"class_scores": C.class_scores(val_probs, val_labels, len(class_names))}
    rows = []
    for level in SET_LEVELS:
        for how, cut in (
            ("all classes", C.threshold(C.scores(val_probs, val_labels), level)),
            ("per class", C.cutoffs(per_class, level, per_class=True)),
        ):
            chosen = C.sets(test_probs, cut)
            held = chosen[np.arange(len(test_labels)), test_labels]
            by_class = {
                name: float(held[test_labels == k].mean())
                for k, name in enumerate(class_names)
                if (test_labels == k).any()
            }
            row = {
                "level": level,
                "calibrated over": how,
                "coverage": float(held.mean()),
                "mean set size": float(chosen.sum(1).mean()),
            }
            if len(class_names) <= CLASS_COLUMNS_UP_TO:
                row.update({f"coverage: {name}": value for name, value in by_class.items()})
            else:
                lowest = min(by_class, key=by_class.get)
                row.update({"lowest class coverage": by_class[lowest], "that class": lowest})
            rows.append(row)
    return pd.DataFrame(rows)
