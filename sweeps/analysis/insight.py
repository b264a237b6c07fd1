"""What a finished sweep says beyond its ranking, as tables the report draws: which settings
mattered (hyperparameter importance), what each model costs to deploy (size, FLOPs, latency
measured here), and where each variant fails (per-class recall and F1, the test images
most trials get wrong)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sweeps.experiment.folder import Experiment
from trainables.core import metrics as M
from trainables.core.errors import UserError
from trainables.trial import checkpoint

OBJECTIVE = M.BEST_VAL_LOSS  # what trials were selected on; lower is better


# ---------------------------------------------------------------- which settings mattered


@dataclass(frozen=True)
class Importance:
    table: pd.DataFrame  # one row per setting, one column per method, shares summing to 1
    keys: list[str]
    note: str  # what it was computed on, or why it could not be


def _distribution(values: pd.Series):
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all() and values.map(lambda v: not isinstance(v, bool)).all():
        low, high = float(numeric.min()), float(numeric.max())
        return FloatDistribution(low, high, log=low > 0 and high / low >= 10), numeric.astype(float)
    return CategoricalDistribution(sorted(values.astype(str).unique())), values.astype(str)


def importance(experiment: Experiment, seed: int = 0) -> Importance:
    """How much of the variation in validation loss each varied setting explains, by
    fANOVA and by PED-ANOVA (optuna.importance), on a study made of the finished trials:
    no new search. Seeds count as a setting: their share is what noise alone explains."""
    import optuna
    from optuna.importance import (
        FanovaImportanceEvaluator,
        PedAnovaImportanceEvaluator,
        get_param_importances,
    )

    results = experiment.results()
    keys = [k for k in experiment.varied if k in results and results[k].nunique() > 1]
    if len(results) < 4 or not keys:
        return Importance(
            pd.DataFrame(),
            keys,
            f"not computed: {len(results)} trials with a result and {len(keys)} varied setting(s)",
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")
    columns = {k: _distribution(results[k]) for k in keys}
    for i in range(len(results)):
        params = {k: columns[k][1].iloc[i] for k in keys}
        params = {
            k: (float(v) if isinstance(v, (np.floating, float)) else str(v))
            for k, v in params.items()
        }
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={k: columns[k][0] for k in keys},
                value=float(results[OBJECTIVE].iloc[i]),
            )
        )
    methods = {
        "fANOVA": FanovaImportanceEvaluator(seed=seed),
        "PED-ANOVA": PedAnovaImportanceEvaluator(),
    }
    table, failed = {}, []
    for name, evaluator in methods.items():
        try:
            table[name] = get_param_importances(study, evaluator=evaluator, normalize=True)
        except Exception as exc:  # PED-ANOVA needs enough trials in its top quantile
            failed.append(f"{name} not computed ({type(exc).__name__}: {str(exc)[:80]})")
    frame = pd.DataFrame(table).reindex(keys).fillna(0.0)
    frame = frame.sort_values(frame.columns[0], ascending=False) if len(frame.columns) else frame
    note = (
        f"{len(results)} trials with a result; objective: {OBJECTIVE} (lower is better); "
        "shares of explained variation, each method's summing to 1"
    )
    return Importance(frame, keys, "; ".join([note, *failed]))


# ---------------------------------------------------------------- what it costs


def _architecture(record) -> str:
    """Trials built alike (weights aside) run alike: they share one latency measurement."""
    build = {k: v for k, v in record.model.__dict__.items() if k != "weights"}
    return json.dumps([build, record.preprocess.image_size], sort_keys=True, default=str)


def latencies(
    experiment: Experiment, rounds: int = 5, threads: int = 1, runtime: str = "torch"
) -> tuple[pd.DataFrame, str]:
    """Each result trial's CPU latency (ms, batch 1 and batch 32), measured for every
    distinct architecture of the experiment in one run, in interleaved rounds, in
    ``runtime`` (torch: eager; onnx: each architecture exported and run by ONNX Runtime,
    as predict and serve run an export); and a line saying how it was measured and how
    noisy it was."""
    import torch

    from trainables.model.costs import measure_latency
    from trainables.model.factory import rebuild

    nets, of_trial = {}, {}
    for trial_id in experiment.results()["trial_id"].astype(str):
        latest = experiment.latest_checkpoint(trial_id)
        if latest is None:
            continue
        try:
            record = checkpoint.read_record(latest)
        except UserError:
            continue  # a checkpoint of an older version: no latency for it
        key = _architecture(record)
        of_trial[trial_id] = key
        if key not in nets:
            net = rebuild(record.model, empty=True)
            net.load_state_dict(checkpoint.read_best_weights(latest))
            size = record.preprocess.image_size
            if runtime == "onnx":
                from trainables.deploy.bundle import OnnxNet

                net = OnnxNet(net.eval(), size, threads)
            nets[key] = (net.eval(), size)
    if not nets:
        return pd.DataFrame(
            columns=["trial_id", M.LATENCY_B1, M.LATENCY_B32]
        ), "no latency: no trial has a checkpoint of this version"
    measured = measure_latency(nets, batches=(1, 32), rounds=rounds, threads=threads)
    rows = [
        {
            "trial_id": t,
            M.LATENCY_B1: round(measured[k][1].median_ms, 3),
            M.LATENCY_B32: round(measured[k][32].median_ms, 3),
        }
        for t, k in of_trial.items()
    ]
    spread = max(max(m[1].spread, m[32].spread) for m in measured.values())
    how = "ONNX Runtime (the export's runtime)" if runtime == "onnx" else "eager torch"
    note = (
        f"latency: {how} on this machine's CPU ({torch.get_num_threads()} threads "
        f"available, {threads} used), median of {rounds} interleaved rounds over "
        f"{len(nets)} architecture(s); the largest spread between rounds was "
        f"{spread:.0%} of the median"
    )
    return pd.DataFrame(rows), note


def pareto(table: pd.DataFrame, cost: str) -> pd.DataFrame:
    """Per variant that gave a result, its best trial by validation loss: ``cost``, test
    accuracy and its interval, and whether it is on the Pareto front (no variant is as
    cheap and better, or cheaper and as good)."""
    from trainables.model.costs import pareto_front

    rows = table[~table["stop_reason"].isin(M.NOT_A_RESULT)].dropna(subset=[cost, M.TEST_ACC])
    best = rows.loc[rows.groupby("variant")[M.BEST_VAL_LOSS].idxmin()].copy()
    best["front"] = pareto_front(best[cost].tolist(), best[M.TEST_ACC].tolist())
    return best.sort_values(cost)


# ---------------------------------------------------------------- where each variant fails


def per_class(experiment: Experiment) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Recall and F1 on test per variant (rows) and class (columns), the mean over the
    variant's seeds, from each trial's test report."""
    recall, f1 = {}, {}
    for _, row in experiment.results().iterrows():
        latest = experiment.latest_checkpoint(str(row["trial_id"]))
        report = checkpoint.read_test_report(latest) if latest else None
        if report is None:
            continue
        recall.setdefault(row["variant"], []).append([c["recall"] for c in report["classes"]])
        f1.setdefault(row["variant"], []).append([c["f1"] for c in report["classes"]])

    def frame(values: dict) -> pd.DataFrame:
        return pd.DataFrame(
            {v: np.mean(x, 0) for v, x in values.items()}, index=experiment.class_names
        ).T.sort_index()

    return frame(recall), frame(f1)


@dataclass(frozen=True)
class Hard:
    path: str
    label: str
    wrong: int  # trials that got it wrong
    trials: int
    mistaken_for: str  # the class those trials said most often


def hardest(
    experiment: Experiment, probabilities: dict[str, np.ndarray], count: int = 12
) -> list[Hard]:
    """The test images most trials get wrong (``probabilities``: trial id -> its test
    probabilities, aligned with the experiment's test images); ties go to the image whose
    true class got the lower mean probability."""
    if not probabilities:
        return []
    labels = experiment.test_labels
    stacked = np.stack(list(probabilities.values()))  # trials x images x classes
    predicted = stacked.argmax(2)
    wrong = (predicted != labels).sum(0)
    truth = stacked[:, np.arange(len(labels)), labels].mean(0)
    order = sorted(range(len(labels)), key=lambda i: (-wrong[i], truth[i], i))
    out = []
    for i in order[:count]:
        if wrong[i] == 0:
            break
        mistakes = Counter(int(p) for p in predicted[:, i] if p != labels[i])
        out.append(
            Hard(
                str(experiment.test_ids[i]),
                experiment.class_names[labels[i]],
                int(wrong[i]),
                len(stacked),
                experiment.class_names[mistakes.most_common(1)[0][0]],
            )
        )
    return out
