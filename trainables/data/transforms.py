"""The per-image training transforms (torchvision.transforms.v2) of the ``loader`` data
path, built from the recipe in ``augment.py``.

Each model's input size, resize interpolation and normalisation come from its own
pretrained config (``factory.data_config``, resolved per trial by ``record.preprocess_for``),
not one global recipe. Decoding resizes the
shorter side to ``image_size / crop_pct`` and keeps the centre square; evaluation then
centre-crops ``image_size`` (for torchvision models: resize 256, crop 224). Augmentation
is for training only.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from trainables.model.record import Preprocess
from trainables.recipe.augment import (
    BLUR_KERNEL,
    BLUR_SIGMA,
    DIHEDRAL_VIEWS,
    FLIP_VIEW,
    AugmentSpec,
)


def policy_transform(name: str) -> v2.Transform:
    """An AutoAugment-family policy, on uint8 images."""
    policies = {
        "autoaugment": lambda: v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET),
        "randaugment": v2.RandAugment,
        "trivialaugment": v2.TrivialAugmentWide,
    }
    return policies[name]()


def dihedral_view(x: torch.Tensor, view: int) -> torch.Tensor:
    """View ``view`` of square images (... x S x S): ``view % 4`` quarter turns, then a
    left-right mirror when ``view >= FLIP_VIEW``."""
    x = torch.rot90(x, view % 4, dims=(-2, -1))
    return x.flip(-1) if view >= FLIP_VIEW else x


class RandomDihedral(torch.nn.Module):
    """One of the 8 symmetries of a square image (C x S x S), uniformly at random: the
    per-image form of ``batch_augment.dihedral_views``."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return dihedral_view(image, int(torch.randint(0, DIHEDRAL_VIEWS, (1,))))


def create_train_transform(
    spec: AugmentSpec, pre: Preprocess, random_erasing: float = 0.0
) -> v2.Compose:
    """The recipe ``spec`` for one uint8 CHW image, then normalisation, then RandomErasing
    with probability ``random_erasing``."""
    if spec.crop_scale is None:
        steps = [v2.CenterCrop(pre.image_size)]
    else:
        steps = [
            v2.RandomResizedCrop(
                pre.image_size,
                scale=spec.crop_scale,
                ratio=spec.crop_ratio,
                antialias=True,
                interpolation=v2.InterpolationMode(pre.interpolation),
            )
        ]
    if spec.flip:
        steps.append(v2.RandomHorizontalFlip())
    if spec.dihedral:
        steps.append(RandomDihedral())
    if spec.policy:
        steps.append(policy_transform(spec.policy))
    else:
        if spec.rotation:
            steps.append(v2.RandomRotation(spec.rotation))
        if spec.jitter:
            steps.append(
                v2.ColorJitter(brightness=spec.jitter, contrast=spec.jitter, saturation=spec.jitter)
            )
        if spec.translate:
            steps.append(v2.RandomAffine(degrees=0, translate=(spec.translate,) * 2))
        if spec.blur:
            steps.append(
                v2.RandomApply([v2.GaussianBlur(BLUR_KERNEL, sigma=BLUR_SIGMA)], p=spec.blur)
            )
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)]
    if random_erasing:
        steps.append(v2.RandomErasing(p=random_erasing))
    return v2.Compose(steps)
