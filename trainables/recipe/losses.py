"""Loss factories, in their registry (the values of the ``loss`` config key). The
``objective`` presets that name a loss and a schedule together are in config.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from trainables.core.errors import UserError
from trainables.core.registry import Registry

if TYPE_CHECKING:
    from trainables.core.config import TrialConfig

LOSSES: Registry[Callable[..., nn.Module]] = Registry("loss")


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


def class_weights(class_counts: list[int], power: float = 1.0) -> torch.Tensor:
    """Inverse-frequency weights raised to ``power`` (1: inverse frequency, 0.5: its square
    root, 0: none), normalised so a balanced set gets all ones."""
    counts = torch.tensor(class_counts, dtype=torch.float32).clamp(min=1)
    return (counts.sum() / (len(counts) * counts)) ** power


def grade_ranks(class_order: str, class_names) -> list[int]:
    """The grade of each class (by label index) for ordered classes: ``class_order`` names
    every class once, lowest grade first ("" keeps the classes' own order). A name that is
    not a class, a class left out or a class named twice is a UserError in one line."""
    names = [str(c) for c in class_names]
    if not class_order:
        return list(range(len(names)))
    order = [c.strip() for c in class_order.split(",") if c.strip()]
    unknown = [c for c in order if c not in names]
    missing = [c for c in names if c not in order]
    twice = sorted({c for c in order if order.count(c) > 1})
    problem = (
        f"names {unknown[0]!r}, which is not a class"
        if unknown
        else f"leaves out {', '.join(map(repr, missing))}"
        if missing
        else f"names {twice[0]!r} twice"
        if twice
        else ""
    )
    if problem:
        raise UserError(
            f"bad value class_order={class_order!r}: it {problem}; list every class once, "
            f"lowest grade first (the classes are {', '.join(names)})"
        )
    return [order.index(c) for c in names]


class OrdinalLoss(nn.Module):
    """For ordered classes (grades): cross-entropy plus the squared earth mover's distance
    between the predicted and the true distribution over the grades (Hou et al. 2016), the
    squared gaps of their cumulative sums in grade order. A prediction one grade off costs
    less than one three grades off, and the network still gives a probability per class
    (ensembles, calibration and prediction sets work as for any trial)."""

    def __init__(self, ranks: list[int], label_smoothing: float = 0.0, weight=None):
        super().__init__()
        self.ce = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
        # column j of the probabilities, reordered by grade: order[g] is grade g's class
        order = sorted(range(len(ranks)), key=lambda j: ranks[j])
        self.register_buffer("order", torch.tensor(order, dtype=torch.long))
        self.register_buffer("rank", torch.tensor(ranks, dtype=torch.long))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = logits.float().softmax(1)[:, self.order]
        true = F.one_hot(self.rank[target], probs.shape[1]).float()
        gap = probs.cumsum(1) - true.cumsum(1)
        return self.ce(logits, target) + (gap**2).sum(1).mean()


@LOSSES.register("ce")
def _cross_entropy(cfg: TrialConfig, class_counts: list[int], class_names=()) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)


@LOSSES.register("focal")
def _focal(cfg: TrialConfig, class_counts: list[int], class_names=()) -> nn.Module:
    return FocalLoss(cfg.focal_gamma)


@LOSSES.register("weighted_ce")
def _weighted_cross_entropy(cfg: TrialConfig, class_counts: list[int], class_names=()) -> nn.Module:
    return nn.CrossEntropyLoss(
        weight=class_weights(class_counts, cfg.class_weight_power),
        label_smoothing=cfg.label_smoothing,
    )


@LOSSES.register("ordinal")
def _ordinal(cfg: TrialConfig, class_counts: list[int], class_names=()) -> nn.Module:
    names = class_names or [str(i) for i in range(len(class_counts))]
    return OrdinalLoss(grade_ranks(cfg.class_order, names), cfg.label_smoothing)


@LOSSES.register("weighted_ordinal")
def _weighted_ordinal(cfg: TrialConfig, class_counts: list[int], class_names=()) -> nn.Module:
    names = class_names or [str(i) for i in range(len(class_counts))]
    return OrdinalLoss(
        grade_ranks(cfg.class_order, names),
        cfg.label_smoothing,
        class_weights(class_counts, cfg.class_weight_power),
    )


def create_loss(cfg: TrialConfig, class_counts: list[int], class_names=()) -> nn.Module:
    return LOSSES[cfg.loss](cfg, class_counts, tuple(class_names))
