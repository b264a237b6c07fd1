"""The trial config: one frozen dataclass, built from the plain dict Ray Tune hands a trial.

Unknown keys are errors, never ignored. Named presets (``objective``) expand here and
nowhere else; explicit keys win over a preset's values. A key renamed since (``RENAMED``)
is read as its new name, with a warning, wherever a config comes in: ``--set``,
``--config``, a study's space, and the records of experiments made before the rename.
"""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from trainables.core import registry
from trainables.core.errors import UserError

# Objective presets: a variant name stands for these field values.
OBJECTIVES: dict[str, dict[str, Any]] = {
    "ce": dict(loss="ce", label_smoothing=0.0, lr_schedule="step"),
    "ls": dict(loss="ce", label_smoothing=0.1, lr_schedule="step"),
    "ls_plateau": dict(loss="ce", label_smoothing=0.1, lr_schedule="plateau"),
    "focal": dict(loss="focal", label_smoothing=0.0, lr_schedule="step"),
    "weighted_ce": dict(loss="weighted_ce", label_smoothing=0.0, lr_schedule="step"),
    # ordered classes (grades): cross-entropy + squared earth mover's distance (class_order)
    "ordinal": dict(loss="ordinal", label_smoothing=0.0, lr_schedule="step"),
    "weighted_ordinal": dict(loss="weighted_ordinal", label_smoothing=0.0, lr_schedule="step"),
}

FIXED_CHOICES: dict[str, tuple[str, ...]] = {
    "pretrained": ("auto", "true", "false"),
    "objective": tuple(OBJECTIVES),
    "sampler": ("shuffle", "balanced"),
    "data_path": ("auto", "device", "loader"),
    "frozen_cache": ("auto", "off"),
    "tta": ("off", "flip", "dihedral"),
    "batchnorm": ("train", "eval"),
    "taps": ("last", "stages", "pyramid", "expanded", "expanded_pyramid"),
}


def choices() -> dict[str, tuple[str, ...]]:
    """The allowed values of every key that takes a name: the fixed ones here, and the
    factories' registries (so a registered optimizer, loss, schedule, strategy or recipe is
    a valid value at once)."""
    return {**FIXED_CHOICES, **registry.choices()}


# (low, high, what) bounds, inclusive unless noted in the check below.
BOUNDS: dict[str, tuple[float, float]] = {
    "aux_weight": (0.0, 10.0),
    "unfreeze_epoch": (0, 10_000),
    "unfreeze_lr": (0.0, 10.0),
    "label_smoothing": (0.0, 0.99),
    "focal_gamma": (0.0, 10.0),
    "class_weight_power": (0.0, 2.0),
    "step_size": (1, 10_000),
    "step_gamma": (0.0, 1.0),
    "plateau_factor": (0.0, 0.999),
    "plateau_patience": (0, 10_000),
    "min_lr": (0.0, 10.0),
    "lr": (1e-12, 10.0),
    "weight_decay": (0.0, 10.0),
    "momentum": (0.0, 1.0),
    "warmup_epochs": (0, 10_000),
    "layer_decay": (0.0, 1.0),
    "frozen_fraction": (0.0, 1.0),
    "ema_decay": (0.0, 0.99999),
    "clip_grad": (0.0, 1e6),
    "batch_size": (1, 65_536),
    "max_epochs": (1, 100_000),
    "early_stop_patience": (0, 100_000),
    "early_stop_min_delta": (0.0, 1e6),
    "image_size": (0, 2048),
    "head_dropout": (0.0, 0.95),
    "head_hidden": (0, 65_536),
    "random_erasing": (0.0, 1.0),
    "chance_epochs": (0, 100_000),
    "chance_margin": (0.0, 1.0),
    "seed": (0, 2**31 - 1),
    "threads": (0, 4096),
    "fold": (-1, 1000),
    "loader_workers": (0, 256),
    "checkpoint_budget": (0.0, 1.0),
    "image_budget_mb": (0.0, 1e9),
}


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs to know. Every field can be set with ``--set KEY=VALUE``."""

    # model
    model: str = "googlenet"
    pretrained: str = "auto"
    # which pretrained weights: a torchvision weights name (IMAGENET1K_V1, ...) or a timm
    # pretrained tag; empty: the library's default (see python sweeps/weights.py list)
    weights: str = ""
    head_dropout: float = 0.0  # dropout before the classifier
    head_hidden: int = 0  # >0: a hidden layer of this width (with ReLU) in the classifier
    # what the classifier reads: last, the network's own pooled output; stages, also the
    # mean- and max-pooled maps at the end of every stage of its trunk, standardised;
    # pyramid, those of the image and of the image at half size, joined; expanded and
    # expanded_pyramid, the same read at each inverted residual block's expanded map
    # (trainables/model/nets.py; the models whose registry entry names a trunk)
    taps: str = "last"
    # fine-tuning strategy (see trainables/recipe/strategies.py)
    strategy: str = "base"
    aux_weight: float = 0.3
    unfreeze_epoch: int = 5  # gradual_unfreeze: the first N epochs train the heads only
    unfreeze_lr: float = 1e-5
    # objective preset and the fields it sets
    objective: str = "ce"
    loss: str = "ce"
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    # the class-weighted losses (weighted_ce, weighted_ordinal) weight class c by
    # (N / (K n_c)) ** power: 1 inverse frequency, 0.5 its square root (a milder pull
    # towards the rare classes), 0 none (trainables/recipe/losses.py)
    class_weight_power: float = 1.0
    # ordered classes: every class name once, lowest grade first, comma-separated ("": the
    # classes' own order); the ordinal losses use it, and the table gains the grade error
    class_order: str = ""
    lr_schedule: str = "step"  # the learning-rate schedule (Tune's trial scheduler is --scheduler)
    step_size: int = 10
    step_gamma: float = 0.1
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    min_lr: float = 1e-6
    # optimisation
    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    momentum: float = 0.9
    # layer-wise lr decay (0: off): block i of L from the input trains at lr x decay^(L-1-i),
    # the head at lr (0.65 to 0.75 is usual; trainables/recipe/optim.py)
    layer_decay: float = 0.0
    # the share of the backbone's blocks, from the input, frozen (and in eval mode) for the
    # whole run whatever the strategy: 0 none; 1 is the feature extractor
    frozen_fraction: float = 0.0
    # eval: every BatchNorm layer keeps its running (ImageNet) statistics while the network
    # trains (its scale and shift still learn): small batches, or a head fitted on the
    # frozen network's features (lp_ft), see the features they were fitted on
    batchnorm: str = "train"
    # epochs of linear learning-rate warm-up (lr x 1/(N+1), 2/(N+1), ...) before the schedule
    warmup_epochs: int = 0
    # >0: an exponential moving average of the weights (timm's ModelEmaV3, updated every
    # step with this decay) is what is validated, scored, kept as best and exported
    ema_decay: float = 0.0
    # >0: every step's gradient is clipped to this norm (over all parameters; timm's
    # dispatch_clip_grad, as its train.py's --clip-grad) before the optimizer steps
    clip_grad: float = 0.0
    batch_size: int = 32
    max_epochs: int = 50
    early_stop_patience: int = 5
    early_stop_min_delta: float = 1e-3
    # stop a trial whose val accuracy is within chance_margin of chance after chance_epochs
    chance_epochs: int = 3
    chance_margin: float = 0.03
    # data
    image_size: int = 0  # 0: the model's own pretrained input size
    augment: str = "notebook"
    random_erasing: float = 0.0  # probability of RandomErasing after the policy
    sampler: str = "shuffle"  # balanced: draw every class equally often (imbalanced data)
    # evaluation
    # test-time views: also score test on the mean of the image and its mirror image (flip)
    # or of its 8 dihedral views (test_acc_tta); an export of the trial averages the same
    tta: str = "off"
    # run
    seed: int = 0
    # compute threads of the trial: its floating-point sums, so its numbers, depend on them.
    # 0: the trial's CPU share, resolved once by the driver and written into every trial's
    # config (sweep.json, trial.json, best_config.json), so --resume and re-runs use it again
    threads: int = 0
    fold: int = -1  # cross-validation: the fold this trial tests on (run.py --folds); -1: none
    deterministic: bool = False  # also torch's deterministic algorithms (cuDNN's on a GPU)
    amp: bool = True  # CUDA: bf16 autocast (fp16 with loss scaling where bf16 is missing)
    # speed (trainables/data/batches.py, benchmarks/README.md)
    data_path: str = "auto"  # device: batched augmentation on the training device; loader:
    # per-image transforms in a DataLoader; auto: device
    loader_workers: int = 0  # DataLoader worker processes of the loader path
    # auto: while the whole backbone is frozen and the training views are a finite set
    # (augment none or dihedral), the head trains on the backbone's outputs computed once
    # and cached (trainables/trial/frozen.py), and while only its first blocks are
    # (frozen_fraction), the rest trains on theirs; off: every layer runs on every batch
    frozen_cache: str = "auto"
    channels_last: bool = True  # CUDA: channels-last memory format for model and batches
    compile: bool = False  # torch.compile the model (pays a compile once per trial)
    # largest share of a trial's time spent writing checkpoints (0: one every epoch); a
    # checkpoint is also written wherever the trial may stop (trainables/trial/checkpoint.py)
    checkpoint_budget: float = 0.02
    # megabytes of decoded images a trial may keep on its device (0: half of the trial's
    # part of the GPU's memory); beyond it, batches come from host memory
    image_budget_mb: float = 0.0

    def __post_init__(self) -> None:
        for name, allowed in choices().items():
            value = getattr(self, name)
            if value not in allowed:
                raise UserError(f"bad value {name}={value!r}: choose one of {', '.join(allowed)}")
        for name, (low, high) in BOUNDS.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise UserError(f"bad value {name}={value!r}: must lie in [{low:g}, {high:g}]")
        if 0 < self.image_size < 16:
            raise UserError(
                f"bad value image_size={self.image_size}: use 16 or more, "
                "or 0 for the model's own input size"
            )

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> TrialConfig:
        """Build from a flat dict; expands ``objective`` and coerces value types."""
        config = with_current_keys(config)
        unknown = [key for key in config if key not in FIELD_TYPES]
        if unknown:
            raise UserError(unknown_key_message(unknown[0]))
        values: dict[str, Any] = {}
        objective = config.get("objective", cls.objective)
        if objective not in OBJECTIVES:
            raise UserError(
                f"bad value objective={objective!r}: choose one of {', '.join(OBJECTIVES)}"
            )
        values.update(OBJECTIVES[objective])
        values.update({key: coerce(key, value) for key, value in config.items()})
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELD_TYPES: dict[str, type] = {
    f.name: {"str": str, "int": int, "float": float, "bool": bool}[f.type]
    for f in fields(TrialConfig)
}


# keys renamed since: old name -> (new name, what it sets); the old name is still read,
# with a warning
RENAMED = {"scheduler": ("lr_schedule", "the learning-rate schedule")}


def current_key(key: str) -> str:
    """``key``'s name today: a renamed key's new name, with a warning."""
    if key not in RENAMED:
        return key
    new, what = RENAMED[key]
    message = f"config key '{key}' is now '{new}' ({what}); read as {new}"
    warnings.warn(message, FutureWarning, stacklevel=2)
    return new


def with_current_keys(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with every renamed key under its new name; both names at once is an
    error."""
    out = {}
    for key, value in config.items():
        new = current_key(key)
        if new != key and new in config:
            raise UserError(f"config keys '{key}' and '{new}' are one setting: keep '{new}'")
        out[new] = value
    return out


def unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, FIELD_TYPES, n=1)
    hint = f"did you mean '{close[0]}'?" if close else "run with --list-keys to see them all"
    return f"unknown config key '{key}': {hint}"


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def coerce(key: str, value: Any) -> Any:
    """Convert ``value`` (a string from the command line, or a numpy scalar from a
    search space) to the field's Python type, or raise a UserError naming the key."""
    kind = FIELD_TYPES[key]
    try:
        if kind is bool:
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError
        if kind is int:
            as_float = float(value)
            if not as_float.is_integer():
                raise ValueError
            return int(as_float)
        if kind is float:
            return float(value)
        text = str(value).strip()
        if key == "tta":  # a yes/no from before there were views: the mirror image or none
            text = text.lower()
            return "flip" if text in _TRUE else "off" if text in _FALSE else text
        return text.lower() if key == "pretrained" else text
    except (TypeError, ValueError):
        raise UserError(f"bad value {key}={value!r}: expected {kind.__name__}") from None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse ``--set KEY=VALUE`` items into typed values, rejecting unknown keys. A value in
    brackets, ``KEY=[A,B,C]``, is a list: a grid over those values."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise UserError(f"bad --set '{item}': write it as KEY=VALUE, e.g. --set lr=0.001")
        if value.startswith("[") and value.endswith("]"):
            overrides[key] = [v.strip() for v in value[1:-1].split(",") if v.strip()]
        else:
            overrides[key] = value
    return check_overrides(overrides)


def check_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """Trial-config fields as a sweep takes them (the Python API's ``overrides``, or the
    command line's ``--set`` items parsed): each key current and known, each value of its
    field's type; a list is a grid of two or more different values."""
    overrides: dict[str, Any] = {}
    for given, value in values.items():
        key = current_key(given)
        if key not in FIELD_TYPES:
            raise UserError(unknown_key_message(key))
        if isinstance(value, (list, tuple)):
            shown = "[" + ",".join(map(_text, value)) + "]"
            if key == "seed" or len(value) < 2 or len(set(map(_text, value))) < len(value):
                hint = (
                    "use `num_samples` for seeds"
                    if key == "seed"
                    else "list two or more different values, e.g. `lr=[0.001,0.0003]`"
                )
                raise UserError(f"bad `{key}={shown}`: {hint}")
            overrides[key] = [coerce(key, v) for v in value]
        else:
            overrides[key] = coerce(key, value)
    return overrides


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def load_config_file(path: str) -> dict[str, Any]:
    """Config fields from a JSON object (such as a search's best_config.json)."""
    import json

    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise UserError(
            f"`config={path}`: cannot be read ({exc.strerror}); pass a JSON file of config fields"
        ) from None
    except json.JSONDecodeError as exc:
        raise UserError(f"`config={path}`: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise UserError(
            f"`config={path}`: not UTF-8 text; pass a JSON file of config fields"
        ) from None
    if not isinstance(data, dict):
        raise UserError(f"`config={path}`: expected a JSON object of config fields")
    data = with_current_keys(data)
    for key in data:
        if key not in FIELD_TYPES:
            raise UserError(f"`config={path}`: {unknown_key_message(key)}")
    return {key: coerce(key, value) for key, value in data.items()}


def describe_keys() -> str:
    """One line per config key with its type and default, for --list-keys."""
    defaults = TrialConfig()
    allowed_values = choices()
    lines = []
    for name, kind in FIELD_TYPES.items():
        allowed = f"  ({' | '.join(allowed_values[name])})" if name in allowed_values else ""
        lines.append(f"{name:22s} {kind.__name__:5s} default {getattr(defaults, name)!r}{allowed}")
    return "\n".join(lines)
