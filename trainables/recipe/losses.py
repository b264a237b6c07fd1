"""Loss factories, in their registry (the values of the ``loss`` config key). The
``objective`` presets that name a loss and a schedule together are in config.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from trainables.core.registry import Registry

if TYPE_CHECKING:
    from trainables.core.config import TrialConfig

LOSSES: Registry[Callable[[TrialConfig, list[int]], nn.Module]] = Registry("loss")


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


@LOSSES.register("ce")
def _cross_entropy(cfg: TrialConfig, class_counts: list[int]) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)


@LOSSES.register("focal")
def _focal(cfg: TrialConfig, class_counts: list[int]) -> nn.Module:
    return FocalLoss(cfg.focal_gamma)


@LOSSES.register("weighted_ce")
def _weighted_cross_entropy(cfg: TrialConfig, class_counts: list[int]) -> nn.Module:
    return nn.CrossEntropyLoss(
        weight=class_weights(class_counts), label_smoothing=cfg.label_smoothing
    )


def create_loss(cfg: TrialConfig, class_counts: list[int]) -> nn.Module:
    return LOSSES[cfg.loss](cfg, class_counts)
