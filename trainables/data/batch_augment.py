"""The batched augmentation of the device path: an ``AugmentSpec`` applied to a whole uint8
batch at once, on whatever device the batch is on, with fresh random parameters for every
image (the per-image path is ``transforms.create_train_transform``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from trainables.data.transforms import dihedral_view, policy_transform
from trainables.model.record import Preprocess
from trainables.recipe.augment import (
    BLUR_SIGMA,
    DIHEDRAL_VIEWS,
    ERASING_RATIO,
    ERASING_SCALE,
    FLIP_VIEW,
    AugmentSpec,
)


def dihedral_views(x: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """Image i of the batch (N x C x S x S) in its view ``views[i]``."""
    out = torch.empty_like(x)
    views = views.to(x.device)
    for view in range(DIHEDRAL_VIEWS):
        chosen = (views == view).nonzero().squeeze(1)
        if len(chosen):
            out[chosen] = dihedral_view(x[chosen], view)
    return out


def draw_views(spec: AugmentSpec, n: int) -> torch.Tensor | None:
    """The view of each of ``n`` images, drawn as the batched path draws it (from torch's
    global generator): a left-right flip with probability 1/2 (view 0 or ``FLIP_VIEW``), or
    one of the dihedral views; None when the recipe has neither. The frozen-feature cache
    makes the same call, so a cached trial sees the very views an uncached one does."""
    if spec.dihedral:
        return torch.randint(0, DIHEDRAL_VIEWS, (n,))
    if spec.flip:
        return torch.where(torch.rand(n) < 0.5, FLIP_VIEW, 0)
    return None


def centre_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Crop N x C x H x W to the centre ``size`` square, as torchvision's CenterCrop does."""
    top = int(round((images.shape[-2] - size) / 2.0))
    left = int(round((images.shape[-1] - size) / 2.0))
    return images[..., top : top + size, left : left + size]


class Normalize:
    """uint8 N x 3 x H x W on any device -> float32, scaled to [0, 1] and standardised."""

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        if self.mean.device != x.device:  # once per device, not every batch
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        return (x - self.mean) / self.std


def _sample_boxes(
    n: int, scale: tuple[float, float], ratio: tuple[float, float], tries: int = 10
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Width and height (as fractions of a square image's side) of boxes whose area is a
    uniform fraction in ``scale`` and whose log aspect ratio is uniform in ``ratio``;
    like torchvision, up to ``tries`` draws per image, the first that fits wins.
    Returns (w, h, found)."""
    area = torch.empty(n, tries).uniform_(*scale)
    log_ratio = torch.empty(n, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    aspect = log_ratio.exp()
    w, h = (area * aspect).sqrt(), (area / aspect).sqrt()
    fits = (w <= 1) & (h <= 1)
    first = fits.float().argmax(1, keepdim=True)  # index of the first fitting draw
    found = fits.any(1)
    return w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1), found


def _gray(x: torch.Tensor) -> torch.Tensor:
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _uniform(n: int, low: float, high: float) -> torch.Tensor:
    return torch.empty(n).uniform_(low, high)


class BatchAugment:
    """An ``AugmentSpec`` applied to a whole uint8 batch at once.

    Geometry (random resized crop, horizontal flip, rotation and translation) is composed
    into one affine map per image and resampled once with ``grid_sample`` (the per-image
    path resamples for each step). Colour jitter applies brightness, contrast and saturation
    in a fixed order (torchvision shuffles the order). Gaussian blur, normalisation and
    random erasing follow. The AutoAugment-family policies have no batched form: they run
    image by image, on the device. Random parameters come from torch's global generator,
    which checkpoints save, so a resumed trial continues the same augmentation stream.
    """

    def __init__(self, spec: AugmentSpec, pre: Preprocess, random_erasing: float = 0.0):
        self.spec = spec
        self.size = pre.image_size
        self.erasing = random_erasing
        self.mode = (
            pre.interpolation if pre.interpolation in ("bilinear", "bicubic") else "bilinear"
        )
        self.normalize = Normalize(pre.mean, pre.std)
        self.policy = policy_transform(spec.policy) if spec.policy else None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 B x 3 x H x W (square, on any device) -> normalised float B x 3 x S x S."""
        spec = self.spec
        if spec.crop_scale is None:
            x = centre_crop(images, self.size).float().div_(255)
            views = draw_views(spec, len(x))
            if views is not None:
                x = dihedral_views(x, views)
        else:
            x = self._geometry(images.float().div_(255))
            if spec.dihedral:
                x = dihedral_views(x, draw_views(spec, len(x)))
        if self.policy is not None:
            as_bytes = x.mul(255).round_().to(torch.uint8)
            x = torch.stack([self.policy(image) for image in as_bytes]).float().div_(255)
        else:
            if spec.jitter:
                x = self._colour(x, spec.jitter)
            if spec.blur:
                x = self._blur(x, spec.blur)
        x = self.normalize(x)
        if self.erasing:
            x = self._erase(x)
        return x

    def _geometry(self, x: torch.Tensor) -> torch.Tensor:
        n, spec = x.shape[0], self.spec
        w, h, found = _sample_boxes(n, spec.crop_scale, spec.crop_ratio)
        w, h = torch.where(found, w, 1.0), torch.where(found, h, 1.0)
        centre = (
            torch.stack([torch.rand(n) * (1 - w) + w / 2, torch.rand(n) * (1 - h) + h / 2], 1) * 2
            - 1
        )
        flip = torch.where(torch.rand(n) < 0.5, -1.0, 1.0) if spec.flip else torch.ones(n)
        if spec.rotation or spec.translate:
            angle = torch.deg2rad(_uniform(n, -spec.rotation, spec.rotation))
            # a fraction of the side; the grid's [-1, 1] spans the side twice over
            shift = torch.empty(n, 2).uniform_(-2 * spec.translate, 2 * spec.translate)
        else:
            angle, shift = torch.zeros(n), torch.zeros(n, 2)
        cos, sin = angle.cos(), angle.sin()
        # output point p -> undo the shift and the rotation -> point q of the crop -> input
        rotate = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)
        scale = torch.diag_embed(torch.stack([flip * w, h], 1))
        linear = scale @ rotate
        offset = centre - (linear @ shift.unsqueeze(2)).squeeze(2)
        theta = _to(torch.cat([linear, offset.unsqueeze(2)], 2), x)
        grid = F.affine_grid(theta, [n, x.shape[1], self.size, self.size], align_corners=False)
        out = F.grid_sample(x, grid, mode=self.mode, padding_mode="zeros", align_corners=False)
        return out.clamp_(0, 1) if self.mode == "bicubic" else out

    @staticmethod
    def _colour(x: torch.Tensor, strength: float) -> torch.Tensor:
        n = x.shape[0]
        factors = _to(torch.empty(3, n, 1, 1, 1).uniform_(1 - strength, 1 + strength), x)
        brightness, contrast, saturation = factors
        x = (x * brightness).clamp_(0, 1)
        mean = _gray(x).mean((2, 3), keepdim=True)
        x = (contrast * x + (1 - contrast) * mean).clamp_(0, 1)
        return (saturation * x + (1 - saturation) * _gray(x)).clamp_(0, 1)

    @staticmethod
    def _blur(x: torch.Tensor, p: float) -> torch.Tensor:
        """GaussianBlur(kernel_size=3, sigma in BLUR_SIGMA, reflect padding) on a random
        share ``p`` of the batch: a separable 3-tap filter as three shifted multiply-adds per
        axis (on CPU and GPU faster than a depthwise convolution). Images not chosen get the
        identity taps, so every batch has one fixed shape of work."""
        n = x.shape[0]
        chosen = (torch.rand(n) < p).view(n, 1)
        sigma = _uniform(n, *BLUR_SIGMA).view(n, 1)
        taps = torch.exp(-(torch.tensor([-1.0, 0.0, 1.0]) ** 2) / (2 * sigma**2))
        taps = torch.where(chosen, taps / taps.sum(1, keepdim=True), torch.tensor([0.0, 1.0, 0.0]))
        side, centre = (_to(t.view(n, 1, 1, 1), x) for t in (taps[:, 0], taps[:, 1]))
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        rows = centre * padded[:, :, 1:-1] + side * (padded[:, :, :-2] + padded[:, :, 2:])
        return centre * rows[..., 1:-1] + side * (rows[..., :-2] + rows[..., 2:])

    def _erase(self, x: torch.Tensor) -> torch.Tensor:
        """RandomErasing(p, its default scale and ratio, value 0) on normalised images."""
        n, size = x.shape[0], x.shape[-1]
        w, h, found = _sample_boxes(n, ERASING_SCALE, ERASING_RATIO)
        chosen = (torch.rand(n) < self.erasing) & found
        top = (torch.rand(n) * (1 - h) * size).floor()
        left = (torch.rand(n) * (1 - w) * size).floor()
        height = torch.where(chosen, (h * size).round(), 0.0)
        box = _to(torch.stack([top, top + height, left, left + (w * size).round()], 1), x)
        where = torch.arange(size, dtype=x.dtype, device=x.device)
        rows = (where >= box[:, 0:1]) & (where < box[:, 1:2])
        cols = (where >= box[:, 2:3]) & (where < box[:, 3:4])
        return x.masked_fill((rows[:, :, None] & cols[:, None, :])[:, None], 0.0)


def _to(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Move a few random parameters drawn on the host to the batch's device without making
    the host wait for the device (a blocking copy would stall every step)."""
    return values.to(like.device, like.dtype, non_blocking=True)
