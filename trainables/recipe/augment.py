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
    # one of the 8 symmetries of the square (a 90-degree rotation, then a horizontal flip or
    # not), uniformly at random, after the geometry above: for images with no natural
    # orientation (inspection photos, microscopy); it replaces ``flip``
    dihedral: bool = False

    def __post_init__(self) -> None:
        if self.dihedral and self.flip:
            raise ValueError("dihedral views include the flip: set flip=False")

    def cached_views(self, random_erasing: float = 0.0) -> tuple[int, ...] | None:
        """The dihedral views (``DIHEDRAL_VIEWS`` indices) a training image can appear in,
        when they are a finite set: a centre crop, then the flip or the dihedral views, and
        nothing random after them. None when the recipe draws from a continuum (random
        crops, rotation, jitter, blur, a policy, random erasing): the frozen-feature cache
        cannot serve such a trial."""
        randomised = (
            self.crop_scale is not None
            or self.rotation
            or self.translate
            or self.jitter
            or self.blur
            or self.policy
            or random_erasing
        )
        if randomised:
            return None
        if self.dihedral:
            return tuple(range(DIHEDRAL_VIEWS))
        return (0, FLIP_VIEW) if self.flip else (0,)


# view k of the square: rotated k % 4 quarter turns (counter-clockwise), then mirrored
# left-right when k >= 4; view 0 is the image itself and view 4 its mirror image
DIHEDRAL_VIEWS = 8
FLIP_VIEW = 4
# the views test-time augmentation averages (the ``tta`` config key)
TTA_VIEWS = {"off": (0,), "flip": (0, FLIP_VIEW), "dihedral": tuple(range(DIHEDRAL_VIEWS))}
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
# the 8 symmetries of the square on the centre crop: a finite set of views, so a frozen
# backbone's outputs for them are computed once (trainables/trial/frozen.py)
AUGMENTS.add("dihedral", AugmentSpec(crop_scale=None, flip=False, dihedral=True))
# the same with small scale, rotation and translation jitter (as in Deitsch et al. 2019 on
# solar cells): every step draws new geometry, so it is never served from the cache
AUGMENTS.add(
    "dihedral_jitter",
    AugmentSpec(
        crop_scale=(0.9, 1.0),
        crop_ratio=(0.95, 1.05),
        flip=False,
        rotation=5.0,
        translate=0.03,
        dihedral=True,
    ),
)


def augment_spec(name: str) -> AugmentSpec:
    return AUGMENTS[name]
