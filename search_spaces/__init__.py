"""Search-space registry: every module in this package that defines ``SPACE`` is a study
that ``python sweeps/run.py --space NAME`` runs. Adding a study is adding one module.

The studies are held in a ``Registry`` (trainables/core/registry.py), as models and
factories are: the package's modules are imported on the first lookup and each ``SPACE``
is added under its name, so two modules naming one study are refused, and an unknown
name is answered with the nearest one."""

from __future__ import annotations

import importlib
import math
import pkgutil
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainables.core.errors import UserError
from trainables.core.registry import Registry, did_you_mean


def is_grid(value: Any) -> bool:
    """A ``tune.grid_search`` value."""
    return isinstance(value, dict) and "grid_search" in value


def is_domain(value: Any) -> bool:
    """A Ray Tune distribution (``tune.uniform``, ``tune.choice``, ...)."""
    from ray.tune.search.sample import Domain

    return isinstance(value, Domain)


class PerKey:
    """A value that depends on another key of the trial's config (its model, its
    strategy): a number, or a (low, high) range drawn log-uniformly. Use through
    ``per_model`` or ``per_key``; the result table shows the value each trial got."""

    def __init__(self, key: str, table: dict[str, float | tuple[float, float]]):
        self.key = key
        self.table = dict(table)

    def __call__(self, config: dict[str, Any]) -> float:
        choice = config[self.key]
        if choice not in self.table:
            raise UserError(
                f"no value for {self.key}={choice} in this study's table; "
                f"it has {', '.join(self.table)}"
            )
        value = self.table[choice]
        if isinstance(value, tuple):
            low, high = value
            return float(math.exp(random.uniform(math.log(low), math.log(high))))
        return value


def per_key(key: str, table: dict[str, float | tuple[float, float]]):
    from ray import tune

    return tune.sample_from(PerKey(key, table))


def per_model(table: dict[str, float | tuple[float, float]]):
    return per_key("model", table)


Points = tuple[dict[str, Any], ...]  # a search's first trials, each a dict of settings


@dataclass(frozen=True)
class Space:
    """A study: what to vary, how to name a variant, and how ASHA prunes it.

    ``param_space`` maps TrialConfig fields to constants or Ray Tune domains
    (``tune.grid_search`` for a grid). ``variant_keys`` name the fields whose values make a
    trial's variant id (its row key and its TensorBoard run name), joined with '-'.
    ``grace_period`` is ASHA's minimum number of epochs; None means ``unfreeze_epoch + 2``.
    Either way a gradual_unfreeze trial is never cut before ``unfreeze_epoch + 2``, so its
    backbone has trained. ``benchmarks/asha_replay.py`` measures what a setting saves and
    what it gets wrong on a sweep run with ``--scheduler fifo``.
    ``search``: ``grid`` runs every grid point, ``--num-samples`` times with different
    seeds; ``tpe`` lets Optuna's TPE sampler pick points, ``--num-samples`` (default
    ``budget``) being the number of trials. ``expand``, if given, turns the param space
    (with the command line's overrides merged in) into the one that runs: for a grid that
    depends on the settings, such as the strategies a model allows. ``points``: the
    trials a search runs first (Optuna's ``points_to_evaluate``), before TPE picks; or a
    function of the param space that runs (after ``expand``) giving them, for points that
    depend on the settings too, such as what a model's head can read.
    """

    name: str
    description: str
    param_space: dict[str, Any]
    variant_keys: tuple[str, ...]
    grace_period: int | None = None
    reduction_factor: int = 3
    search: str = "grid"
    budget: int = 20
    expand: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    points: Points | Callable[[dict[str, Any]], Points] = ()

    def variant(self, config: dict[str, Any]) -> str:
        from trainables.model.record import variant_name

        return variant_name(config, self.variant_keys)


SPACES: Registry[Space] = Registry("space", checked=False)


def _discover() -> Registry[Space]:
    """Import every study module once and add its ``SPACE`` to ``SPACES``."""
    if SPACES.names():
        return SPACES
    found: dict[str, str] = {}  # study name -> its module
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        if info.name.startswith("_"):
            continue
        space = getattr(importlib.import_module(f"{__name__}.{info.name}"), "SPACE", None)
        if not isinstance(space, Space):
            continue
        if space.name in found:
            raise ValueError(
                f"study '{space.name}' is defined in search_spaces/{found[space.name]}.py "
                f"and in search_spaces/{info.name}.py: give each study its own name"
            )
        found[space.name] = info.name
        SPACES.add(space.name, space)
    return SPACES


def registry() -> dict[str, Space]:
    """All registered spaces by name, sorted."""
    spaces = _discover()
    return {name: spaces[name] for name in sorted(spaces)}


def get_space(name: str) -> Space:
    spaces = registry()
    if name not in spaces:
        raise UserError(
            f"unknown space '{name}'{did_you_mean(name, spaces)}: choose one of "
            f"{', '.join(spaces)} (see --list-spaces)"
        )
    return spaces[name]
