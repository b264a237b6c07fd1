"""Train and eval transforms on decoded uint8 CHW tensors (torchvision.transforms.v2).

Augmentation is for training only; evaluation is deterministic: the decoded image is the
resized square, and evaluation centre-crops ``image_size`` from it (resize 256, crop 224).
"""
from __future__ import annotations

import torch
from torchvision.transforms import v2

from trainables.config import TrialConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _to_float() -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def create_train_transform(cfg: TrialConfig) -> v2.Compose:
    """The ``augment`` policy named in the config, ending in a normalised float tensor."""
    size = cfg.image_size
    if cfg.augment == "none":
        return v2.Compose([v2.CenterCrop(size), *_to_float()])
    # "notebook": the augmentation the fine-tuning notebooks use
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomRotation(15),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        v2.RandomAffine(degrees=0, translate=(0.1, 0.1)),
        v2.RandomApply([v2.GaussianBlur(kernel_size=3)], p=0.2),
        *_to_float(),
    ])


def create_eval_transform(cfg: TrialConfig) -> v2.Compose:
    return v2.Compose([v2.CenterCrop(cfg.image_size), *_to_float()])
