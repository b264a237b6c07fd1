"""One trial, resolved once: ``build_trial(cfg, handle)`` turns a config and the data handle
into the model, strategy, data and the trial's record (``record.py``), without Ray. The
trainable, the tests and the benchmarks all build their trials here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from trainables.core.config import TrialConfig
from trainables.data import DataHandle
from trainables.data.batches import nchw
from trainables.model.factory import HeadSpec, Net, create_model
from trainables.model.record import Preprocess, TrialRecord, preprocess_for, variant_name
from trainables.recipe.strategies import Strategy, create_strategy
from trainables.trial.loop import EvalSplit, Report, TrialData, fit

__all__ = [
    "Trial",
    "TrialRecord",
    "build_trial",
    "preprocess_for",
    "seed_everything",
    "trial_data",
    "variant_name",
]


@dataclass
class Trial:
    cfg: TrialConfig
    strategy: Strategy
    net: Net
    data: TrialData
    record: TrialRecord

    def fit(
        self,
        device: torch.device,
        report: Report,
        resume: dict | None = None,
        gpu_fraction: float = 1.0,
    ) -> dict:
        return fit(
            self.cfg, self.net, self.strategy, self.data, device, report, resume, gpu_fraction
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def trial_data(handle: DataHandle, pre: Preprocess) -> TrialData:
    """Split views over the shared decoded images, preprocessed as this trial's model wants."""
    images = handle.images(pre.load_size, pre.interpolation)
    rows, labels = np.asarray(handle.rows), np.asarray(handle.labels)
    tr, va, te = (handle.indices(s) for s in ("train", "val", "test"))

    def eval_split(part: np.ndarray) -> EvalSplit:
        paths = np.asarray([handle.files[r] for r in rows[part]], dtype=str)  # as in split.csv
        return EvalSplit(
            nchw(images),
            torch.as_tensor(labels[part], dtype=torch.long),
            paths,
            rows=torch.as_tensor(rows[part], dtype=torch.long),
            size=pre.image_size,
        )

    return TrialData(
        images=images,
        train_rows=rows[tr],
        train_labels=labels[tr],
        val=eval_split(va),
        test=eval_split(te),
        num_classes=handle.num_classes,
        preprocess=pre,
        cache_dir=handle.cache_dir,
        images_key=f"{handle.digest}-{pre.load_size}-{pre.interpolation}",
        class_names=tuple(handle.class_names),
    )


def build_trial(
    cfg: TrialConfig, handle: DataHandle, variant: str = "", offline_weights: bool = False
) -> Trial:
    """Seed, build the strategy, the model (loading its pretrained weights unless
    ``offline_weights``: the driver found them unavailable) and the data views, and record
    what they resolved to."""
    seed_everything(cfg.seed)
    strategy = create_strategy(cfg)
    built = create_model(
        cfg.model,
        handle.num_classes,
        cfg.pretrained,
        strategy.aux_heads,
        offline=offline_weights,
        head=HeadSpec(cfg.head_dropout, cfg.head_hidden),
        image_size=cfg.image_size,
        weights=cfg.weights,
        taps=cfg.taps,
    )
    pre = preprocess_for(cfg)
    if cfg.fold >= 0:  # cross-validation: this fold's train/val/test
        handle = handle.for_fold(cfg.fold)
    data = trial_data(handle, pre)
    record = TrialRecord(
        variant=variant,
        config=cfg.to_dict(),
        model=built.build,
        preprocess=pre,
        class_names=tuple(handle.class_names),
        data={
            "root": handle.root,
            "digest": handle.digest,
            **({"fold": cfg.fold, "folds": handle.fold_count} if cfg.fold >= 0 else {}),
        },
    )
    return Trial(cfg, strategy, built.net, data, record)
