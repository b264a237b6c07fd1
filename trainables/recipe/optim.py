"""Optimizer and learning-rate schedule factories, each in its registry (the values of the
``optimizer`` and ``lr_schedule`` config keys).

Every schedule answers the same ``step(val_loss)`` call once per epoch, so the loop never
branches on schedule type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import optim

from trainables.core.registry import Registry

if TYPE_CHECKING:
    from trainables.core.config import TrialConfig

OPTIMIZERS: Registry[Callable[[TrialConfig, list], optim.Optimizer]] = Registry("optimizer")
SCHEDULES: Registry[Callable[[TrialConfig, optim.Optimizer], object]] = Registry("lr_schedule")


@OPTIMIZERS.register("adam")
def _adam(cfg: TrialConfig, params: list) -> optim.Optimizer:
    return optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adamw")
def _adamw(cfg: TrialConfig, params: list) -> optim.Optimizer:
    return optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("sgd")
def _sgd(cfg: TrialConfig, params: list) -> optim.Optimizer:
    return optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.momentum > 0,
    )


def create_optimizer(cfg: TrialConfig, params) -> optim.Optimizer:
    """All parameters go to the optimizer; frozen ones simply get no gradient, so unfreezing
    later needs no new optimizer."""
    return OPTIMIZERS[cfg.optimizer](cfg, list(params))


@SCHEDULES.register("step")
def _step(cfg: TrialConfig, optimizer: optim.Optimizer):
    return optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.step_gamma)


@SCHEDULES.register("plateau")
def _plateau(cfg: TrialConfig, optimizer: optim.Optimizer):
    return optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode="min",
        factor=cfg.plateau_factor,
        patience=cfg.plateau_patience,
        min_lr=cfg.min_lr,
    )


@SCHEDULES.register("cosine")
def _cosine(cfg: TrialConfig, optimizer: optim.Optimizer):
    return optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.max_epochs, eta_min=cfg.min_lr)


@SCHEDULES.register("none")
def _constant(cfg: TrialConfig, optimizer: optim.Optimizer):
    return None


class Schedule:
    """A learning-rate schedule stepped once per epoch with the validation loss, after
    ``warmup`` epochs of linear warm-up: the learning rate is 1/(warmup+1) of its value in
    the first epoch, 2/(warmup+1) in the second, and its own from epoch warmup+1 on, when
    the schedule starts counting (a StepLR's steps, a plateau's patience)."""

    def __init__(self, inner, optimizer: optim.Optimizer | None = None, warmup: int = 0):
        self.inner, self.optimizer, self.warmup = inner, optimizer, warmup
        self.warmed = 0  # warm-up epochs done
        if warmup and optimizer is not None:
            self.target = [group["lr"] for group in optimizer.param_groups]
            self._set(1 / (warmup + 1))

    def _set(self, factor: float) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.target):
            group["lr"] = lr * factor

    def step(self, val_loss: float) -> None:
        if self.warmed < self.warmup:
            self.warmed += 1
            self._set((self.warmed + 1) / (self.warmup + 1))
        elif isinstance(self.inner, optim.lr_scheduler.ReduceLROnPlateau):
            self.inner.step(val_loss)
        elif self.inner is not None:
            self.inner.step()

    def state_dict(self) -> dict:
        state = self.inner.state_dict() if self.inner is not None else {}
        return {**state, "warmed": self.warmed} if self.warmup else state

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        self.warmed = state.pop("warmed", self.warmed)
        if self.inner is not None:
            self.inner.load_state_dict(state)


def create_schedule(cfg: TrialConfig, optimizer: optim.Optimizer) -> Schedule:
    return Schedule(SCHEDULES[cfg.lr_schedule](cfg, optimizer), optimizer, cfg.warmup_epochs)


def block_key(name: str) -> str:
    """The block a parameter or module of a torchvision network belongs to: its first name,
    with the index when a sequence of blocks follows (``features.3``, ``layer1``, ``fc``)."""
    parts = name.split(".")
    if parts and parts[0] == "body":
        parts = parts[1:]
    if len(parts) > 1 and parts[1].isdigit():
        return ".".join(parts[:2])
    return parts[0] if parts else ""


def layer_blocks(net) -> list[list[str]]:
    """The network's parameter names in blocks, from the input to the classifier head (the
    last block). timm models are grouped by their own ``group_matcher`` (timm's
    ``group_parameters``); torchvision and the small CNN have none, and timm's fallback puts
    such a network in one block, so theirs are grouped by ``block_key``."""
    body = net.body
    head = [n for n, _ in net.named_parameters() if net.is_head(n)]
    if hasattr(body, "group_matcher"):
        from timm.models import group_parameters

        grouped = group_parameters(body, body.group_matcher(coarse=False))
        blocks = [[f"body.{n}" for n in names] for _, names in sorted(grouped.items())]
    else:
        order: dict[str, list[str]] = {}
        for name, _ in net.named_parameters():
            order.setdefault(block_key(name), []).append(name)
        blocks = list(order.values())
    blocks = [[n for n in block if n not in head] for block in blocks]
    return [block for block in blocks if block] + [head]


def layer_decay_groups(cfg: TrialConfig, net) -> list[dict]:
    """Layer-wise learning-rate decay: block i of L (``layer_blocks``) gets
    ``lr * layer_decay ** (L - 1 - i)``, so the head trains at ``lr`` and the first blocks,
    whose ImageNet features are the most general, move least."""
    params = dict(net.named_parameters())
    blocks = layer_blocks(net)
    last = len(blocks) - 1
    return [
        {"params": [params[n] for n in block], "lr": cfg.lr * cfg.layer_decay ** (last - i)}
        for i, block in enumerate(blocks)
    ]
