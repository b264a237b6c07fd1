"""Trials for the loop and strategy tests, built the way every trial is (``build_trial``) on
real image files; and small in-memory data for tests of the loop's parts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from trainables.core import metrics as M
from trainables.core.config import TrialConfig
from trainables.model.record import Preprocess
from trainables.trial import checkpoint
from trainables.trial.build import Trial, build_trial
from trainables.trial.loop import EvalSplit, TrialData

CPU = torch.device("cpu")
SMALL = {
    "model": "small_cnn",
    "pretrained": "false",
    "image_size": 32,
    "lr": 3e-3,
    "lr_schedule": "none",
    "batch_size": 8,
}


@dataclass
class Fitted:
    trial: Trial
    reports: list[dict] = field(default_factory=list)
    state: dict = field(default_factory=dict)  # the last state fit() handed to report

    @property
    def last(self) -> dict:
        return self.reports[-1]


def fit_trial(
    handle,
    overrides: dict | None = None,
    checkpoints: Path | None = None,
    resume: dict | None = None,
    wrap=None,
    reseed: int | None = None,
    hook=None,
) -> Fitted:
    """Build a trial of a small CNN (``overrides`` on top) and fit it on CPU. With
    ``checkpoints`` (a folder), each epoch's checkpoint is written there as the trainable
    writes it; ``wrap`` sees the built network and may replace it (to make it fail);
    ``hook(net, optimizer, epoch)`` runs after the strategy's epoch start; ``reseed``
    reseeds torch's global generator after building, so that only ``resume`` can restore
    the stream."""
    cfg = TrialConfig.from_dict({**SMALL, **(overrides or {})})
    trial = build_trial(cfg, handle, variant="test")
    if wrap is not None:
        trial.net = wrap(trial.net)
    if hook is not None:
        start = trial.strategy.on_epoch_start

        def spied(net, optimizer, epoch):
            start(net, optimizer, epoch)
            hook(net, optimizer, epoch)

        trial.strategy.on_epoch_start = spied
    if reseed is not None:
        torch.manual_seed(reseed)
    fitted = Fitted(trial)

    def report(metrics, state):
        fitted.reports.append(metrics)
        fitted.state = state
        if checkpoints is not None:
            directory = checkpoints / f"epoch_{metrics[M.EPOCH]}"
            directory.mkdir(parents=True)
            checkpoint.save(directory, state, trial.record)

    trial.fit(CPU, report, resume)
    return fitted


def tiny_trial_data(
    num_classes: int = 3, image_size: int = 32, n: int = 12, seed: int = 0
) -> TrialData:
    """uint8 images whose class brightens one colour channel: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)

    def make(count):
        y = torch.arange(count) % num_classes
        x = torch.randint(60, 120, (count, image_size, image_size, 3), generator=g)
        x[torch.arange(count), :, :, y % 3] += 120
        return x.to(torch.uint8), y

    sizes = [n, max(num_classes, n // 2), max(num_classes, n // 2)]
    parts = [make(count) for count in sizes]
    images = torch.cat([x for x, _ in parts]).numpy()
    rows = np.split(np.arange(sum(sizes)), np.cumsum(sizes)[:-1])

    def split(i):
        return EvalSplit(
            torch.from_numpy(images[rows[i]]).permute(0, 3, 1, 2).contiguous(), parts[i][1], rows[i]
        )

    return TrialData(
        images=images,
        train_rows=rows[0],
        train_labels=parts[0][1].numpy(),
        val=split(1),
        test=split(2),
        num_classes=num_classes,
        preprocess=Preprocess(image_size, image_size, "bilinear", (0.5,) * 3, (0.25,) * 3),
    )
