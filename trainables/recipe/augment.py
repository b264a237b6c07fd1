"""Training augmentation recipes: one spec per recipe, read by both data paths (the
per-image transforms of ``transforms.py`` and the batched ones of ``batches.py``), so the two
cannot drift apart. ``--set augment=NAME`` picks a recipe; a new recipe is one
``AUGMENTS.add`` line.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainables.core.registry import Registry


@dataclass(frozen=True)
class AugmentSpec:
    """What one training image goes through, in this order: a random resized crop (or a
    centre crop when ``crop_scale`` is None), a horizontal flip, rotation and translation,
    colour jitter, Gaussian blur, or instead of the last three an AutoAugment-family
    ``policy``. Normalisation and random erasing (``random_erasing`` in the config) follow."""

    crop_scale: tuple[float, float] | None = (0.7, 1.0)  # area fraction of the crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range of the crop
    flip: bool = True  # horizontal flip with probability 1/2
    rotation: float = 0.0  # degrees, uniform in [-rotation, rotation]
    translate: float = 0.0  # fraction of the side, uniform in [-translate, translate]
    jitter: float = 0.0  # brightness, contrast and saturation factors in [1-j, 1+j]
    blur: float = 0.0  # probability of a 3x3 Gaussian blur, sigma uniform in BLUR_SIGMA
    policy: str = ""  # "autoaugment" | "randaugment" | "trivialaugment"


BLUR_SIGMA = (0.1, 2.0)
BLUR_KERNEL = 3
ERASING_SCALE = (0.02, 0.33)  # RandomErasing's defaults
ERASING_RATIO = (0.3, 3.3)

AUGMENTS: Registry[AugmentSpec] = Registry("augment")
# what the fine-tuning notebooks do
AUGMENTS.add("notebook", AugmentSpec(rotation=15.0, translate=0.1, jitter=0.2, blur=0.2))
AUGMENTS.add("autoaugment", AugmentSpec(policy="autoaugment"))
AUGMENTS.add("randaugment", AugmentSpec(policy="randaugment"))
AUGMENTS.add("trivialaugment", AugmentSpec(policy="trivialaugment"))
# geometry only, no colour change: for images whose label may lie in a small detail or in
# the grey level (inspection photos), where crops down to 70% and colour jitter can remove it
AUGMENTS.add("flip", AugmentSpec(crop_scale=(0.85, 1.0), crop_ratio=(0.9, 1.1)))
AUGMENTS.add("none", AugmentSpec(crop_scale=None, flip=False))


def augment_spec(name: str) -> AugmentSpec:
    return AUGMENTS[name]
