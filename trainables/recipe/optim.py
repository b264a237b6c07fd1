"""Optimizer and learning-rate schedule factories, each in its registry (the values of the
``optimizer`` and ``scheduler`` config keys).

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
SCHEDULES: Registry[Callable[[TrialConfig, optim.Optimizer], object]] = Registry("scheduler")


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
    """A learning-rate schedule stepped once per epoch with the validation loss."""

    def __init__(self, inner):
        self.inner = inner

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
    return Schedule(SCHEDULES[cfg.scheduler](cfg, optimizer))
