"""The Ray Tune trainable: turn a config dict into a fitted model, reporting every epoch.

It only wires things together: config -> data / model / strategy -> ``fit`` -> ``tune.report``
with a checkpoint that lets a restarted trial resume where it stopped.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import logging
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from trainables import metrics as M
from trainables.batches import centre_crop, nchw
from trainables.config import TrialConfig
from trainables.data import DataHandle
from trainables.evaluation import per_class_report
from trainables.loop import EvalSplit, FitState, TrialData, fit
from trainables.models import HeadSpec, create_model
from trainables.strategies import create_strategy
from trainables.transforms import resolve_preprocess

STATE_FILE = "state.pt"
BEST_WEIGHTS_FILE = "best_model.pt"
PREDICTIONS_FILE = "predictions.npz"
TEST_REPORT_FILE = "test_report.json"  # per-class precision/recall/F1 and confusion matrix
META_FILE = "meta.json"


def build_trial_data(handle: DataHandle, cfg: TrialConfig) -> TrialData:
    """Split views over the shared decoded images, preprocessed as this trial's model wants."""
    pre = resolve_preprocess(cfg)
    images = handle.images(pre.load_size, pre.interpolation)
    rows, labels = np.asarray(handle.rows), np.asarray(handle.labels)
    tr, va, te = (handle.indices(s) for s in ("train", "val", "test"))

    def eval_split(part: np.ndarray) -> EvalSplit:
        crop = centre_crop(nchw(images)[rows[part]], pre.image_size).contiguous()
        paths = np.asarray([handle.files[r] for r in rows[part]], dtype=str)  # as in split.csv
        return EvalSplit(crop, torch.as_tensor(labels[part], dtype=torch.long), paths)

    return TrialData(
        images=images, images_key=(handle.digest, pre.load_size, pre.interpolation),
        train_rows=rows[tr], train_labels=labels[tr], val=eval_split(va), test=eval_split(te),
        num_classes=handle.num_classes, preprocess=pre)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_checkpoint(directory: Path, state: dict, meta: dict) -> None:
    """Write a resumable checkpoint: training state, best weights, best predictions."""
    fit_state: FitState = state["fit"]
    light = dict(state, fit=dataclasses.replace(fit_state, best_weights=None, predictions=None))
    torch.save(light, directory / STATE_FILE)
    if fit_state.best_weights is not None:
        torch.save(fit_state.best_weights, directory / BEST_WEIGHTS_FILE)
    if fit_state.predictions is not None:
        np.savez(directory / PREDICTIONS_FILE, **fit_state.predictions)
        p = fit_state.predictions
        names = meta.get("class_names") or [str(i) for i in range(p["test_probs"].shape[1])]
        report = per_class_report(p["test_labels"], p["test_probs"].argmax(1), names)
        (directory / TEST_REPORT_FILE).write_text(json.dumps(report, indent=1))
    (directory / META_FILE).write_text(json.dumps(meta, indent=1))


def load_checkpoint(directory: Path) -> dict:
    state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=False)
    fit_state: FitState = state["fit"]
    if (directory / BEST_WEIGHTS_FILE).exists():
        fit_state.best_weights = torch.load(directory / BEST_WEIGHTS_FILE, map_location="cpu")
    if (directory / PREDICTIONS_FILE).exists():
        with np.load(directory / PREDICTIONS_FILE) as npz:
            fit_state.predictions = {k: npz[k] for k in npz.files}
    return state


def train_trial(config: dict, data: DataHandle, unavailable_weights: tuple[str, ...] = ()) -> None:
    """Ray Tune function trainable. ``data`` and ``unavailable_weights`` come through
    ``tune.with_parameters``; ``config`` is this trial's point in the search space."""
    import ray
    from ray import tune

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "checkpoint saved" per epoch
    cfg = TrialConfig.from_dict(config)
    seed_everything(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    strategy = create_strategy(cfg)
    built = create_model(cfg.model, data.num_classes, cfg.pretrained, strategy.aux_heads,
                         offline=cfg.model in unavailable_weights,
                         head=HeadSpec(cfg.head_dropout, cfg.head_hidden),
                         image_size=cfg.image_size)
    trial_data = build_trial_data(data, cfg)
    checkpoint = tune.get_checkpoint()
    resume = None
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume = load_checkpoint(Path(directory))
    meta = {"config": cfg.to_dict(), "class_names": list(data.class_names),
            "num_classes": data.num_classes, "aux_heads": strategy.aux_heads,
            "pretrained": built.pretrained}

    extra = {M.PRETRAINED: int(built.pretrained),
             M.NODE: ray.get_runtime_context().get_node_id()[:8]}

    def report(metrics: dict, state: dict) -> None:
        with tempfile.TemporaryDirectory() as directory:
            save_checkpoint(Path(directory), state, meta)
            tune.report({**metrics, **extra}, checkpoint=tune.Checkpoint.from_directory(directory))

    net = built.net
    try:
        fit(cfg, net, strategy, trial_data, device, report, resume=resume)
    finally:
        # Free the model before the next trial reuses this worker (ASHA stops land here too).
        del net, built, trial_data
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
