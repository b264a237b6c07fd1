"""Preprocessing and augmentation on decoded uint8 CHW tensors (torchvision.transforms.v2).

Each model's input size, resize interpolation and normalisation come from its own
pretrained config (``models.data_config``), not one global recipe. Decoding resizes the
shorter side to ``image_size / crop_pct`` and keeps the centre square; evaluation then
centre-crops ``image_size`` (for torchvision models: resize 256, crop 224). Augmentation
is for training only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from trainables.config import TrialConfig
from trainables.models import data_config


@dataclass(frozen=True)
class Preprocess:
    image_size: int  # what the model sees
    load_size: int  # what is decoded and cached
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


def resolve_preprocess(cfg: TrialConfig) -> Preprocess:
    """The trial's preprocessing: the model's own, with ``image_size`` overriding its size."""
    model = data_config(cfg.model)
    size = cfg.image_size or model.input_size
    load = max(size, int(round(size / model.crop_pct)))
    return Preprocess(size, load, model.interpolation, model.mean, model.std)


def _to_float(pre: Preprocess) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)]


def _policy(name: str) -> list:
    if name == "autoaugment":
        return [v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)]
    if name == "randaugment":
        return [v2.RandAugment()]
    if name == "trivialaugment":
        return [v2.TrivialAugmentWide()]
    # "notebook": what the fine-tuning notebooks do
    return [v2.RandomRotation(15), v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
            v2.RandomAffine(degrees=0, translate=(0.1, 0.1)),
            v2.RandomApply([v2.GaussianBlur(kernel_size=3)], p=0.2)]


def create_train_transform(cfg: TrialConfig, pre: Preprocess) -> v2.Compose:
    """Random resized crop and flip, the ``augment`` policy, normalisation, and
    RandomErasing with probability ``random_erasing``."""
    if cfg.augment == "none":
        steps = [v2.CenterCrop(pre.image_size), *_to_float(pre)]
    else:
        interpolation = v2.InterpolationMode(pre.interpolation)
        steps = [v2.RandomResizedCrop(pre.image_size, scale=(0.7, 1.0),
                                      interpolation=interpolation, antialias=True),
                 v2.RandomHorizontalFlip(), *_policy(cfg.augment), *_to_float(pre)]
    if cfg.random_erasing:
        steps.append(v2.RandomErasing(p=cfg.random_erasing))
    return v2.Compose(steps)
