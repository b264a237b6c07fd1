"""Loss, optimizer and learning-rate schedule factories.

Every schedule answers the same ``step(val_loss)`` call once per epoch, so the loop never
branches on schedule type.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn, optim

from trainables.config import TrialConfig


class FocalLoss(nn.Module):
    """Multi-class focal loss (Lin et al., 2017): cross-entropy down-weighted on easy samples."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1)
        log_pt = log_p.gather(1, target[:, None]).squeeze(1)
        loss = -((1.0 - log_pt.exp()) ** self.gamma) * log_pt
        if self.weight is not None:
            loss = loss * self.weight[target]
        return loss.mean()


def class_weights(class_counts: list[int]) -> torch.Tensor:
    """Inverse-frequency weights, normalised so a balanced set gets all ones."""
    counts = torch.tensor(class_counts, dtype=torch.float32).clamp(min=1)
    return counts.sum() / (len(counts) * counts)


def create_loss(cfg: TrialConfig, class_counts: list[int]) -> nn.Module:
    if cfg.loss == "focal":
        return FocalLoss(cfg.focal_gamma)
    weight = class_weights(class_counts) if cfg.loss == "weighted_ce" else None
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


def create_optimizer(cfg: TrialConfig, params) -> optim.Optimizer:
    """All parameters go to the optimizer; frozen ones simply get no gradient, so unfreezing
    later needs no new optimizer."""
    params = list(params)
    if cfg.optimizer == "sgd":
        return optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                         weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
    cls = optim.AdamW if cfg.optimizer == "adamw" else optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class Schedule:
    """A learning-rate schedule stepped once per epoch with the validation loss."""

    def __init__(self, cfg: TrialConfig, optimizer: optim.Optimizer):
        sched = optim.lr_scheduler
        self.inner = None
        if cfg.scheduler == "step":
            self.inner = sched.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.step_gamma)
        elif cfg.scheduler == "plateau":
            self.inner = sched.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.plateau_factor,
                                                 patience=cfg.plateau_patience, min_lr=cfg.min_lr)
        elif cfg.scheduler == "cosine":
            self.inner = sched.CosineAnnealingLR(optimizer, T_max=cfg.max_epochs,
                                                 eta_min=cfg.min_lr)

    def step(self, val_loss: float) -> None:
        if isinstance(self.inner, optim.lr_scheduler.ReduceLROnPlateau):
            self.inner.step(val_loss)
        elif self.inner is not None:
            self.inner.step()

    def state_dict(self) -> dict:
        return self.inner.state_dict() if self.inner is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.inner is not None:
            self.inner.load_state_dict(state)


def create_schedule(cfg: TrialConfig, optimizer: optim.Optimizer) -> Schedule:
    return Schedule(cfg, optimizer)
