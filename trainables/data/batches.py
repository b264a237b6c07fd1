"""Training batches: the two data paths, and where a trial keeps its decoded images.

Both paths start from the decoded uint8 images (``data/decode.py``'s decode-once cache) and
draw the same sample order from the same seeded sampler.

``loader``: a DataLoader runs ``transforms.create_train_transform`` image by image on the
CPU, the way the notebooks do (minus the JPEG decoding every epoch).

``device``: when they fit the trial's budget, the decoded images are copied to the training
device once (a worker that Ray reuses for its next trial keeps them there) and each step
gathers its batch there; when they do not, each step gathers its batch in host memory and
copies it over. Either way ``batch_augment.BatchAugment`` augments the whole batch in a
few batched kernels, with fresh random parameters for every image.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from trainables.core.config import TrialConfig
from trainables.data.batch_augment import BatchAugment, Normalize, centre_crop
from trainables.data.transforms import create_train_transform
from trainables.recipe.augment import augment_spec

__all__ = [
    "BatchAugment",
    "DecodedImages",
    "DeviceBatches",
    "HostBatches",
    "Normalize",
    "Placement",
    "centre_crop",
    "image_placement",
    "nchw",
    "training_batches",
]


def use_device_path(cfg: TrialConfig) -> bool:
    """``data_path=auto`` picks the device path on every device: it is the faster one on CPU
    as well as on GPU (benchmarks/README.md, data path)."""
    return cfg.data_path in ("auto", "device")


def nchw(images: np.ndarray) -> torch.Tensor:
    """An N x H x W x 3 uint8 array (a read-only memory map too) as an N x 3 x H x W tensor
    view with channels-last strides; nothing is copied or written."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2)


# ------------------------------------------------------------------ the loader path


class DecodedImages(Dataset):
    """Per-image view of the decoded uint8 images: one augmented float tensor per item."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, labels: np.ndarray, transform):
        self.images, self.rows, self.labels, self.transform = images, rows, labels, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        image = torch.from_numpy(np.array(self.images[self.rows[i]])).permute(2, 0, 1)
        return self.transform(image), int(self.labels[i])


# ------------------------------------------------------------------ the device path


class DeviceBatches:
    """Iterates (augmented images, labels) on the device; images never leave it."""

    def __init__(
        self,
        images: torch.Tensor,
        rows: np.ndarray,
        labels: np.ndarray,
        sampler: Sampler,
        batch_size: int,
        augment: BatchAugment,
        channels_last: bool = False,
    ):
        device = images.device
        self.images = images
        self.rows = torch.as_tensor(rows, dtype=torch.long, device=device)
        self.labels = torch.as_tensor(labels, dtype=torch.long, device=device)
        self.batches = BatchSampler(sampler, batch_size, drop_last=lone_last(sampler, batch_size))
        self.augment = augment
        self.layout = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.batches:
            index = torch.as_tensor(batch, dtype=torch.long).to(self.rows.device, non_blocking=True)
            x = self.augment(self.images.index_select(0, self.rows[index]))
            # the gathered images keep the cache's channels-last strides: make the layout the
            # model expects explicit (on CPU, convolutions on channels-last input run slower)
            yield x.contiguous(memory_format=self.layout), self.labels[index]


_RESIDENT: dict = {}  # (key, device) -> the decoded images on that device, for reused workers

# Without --set image_budget_mb, the decoded images may take this share of the trial's part
# of its GPU's memory (the model, its activations and the optimizer need the rest).
DEVICE_IMAGE_SHARE = 0.5


@dataclass(frozen=True)
class Placement:
    """Where a trial keeps its decoded images, and why."""

    where: str  # "device" (a copy on the training device, or the memory map on the CPU) or
    # "host" (batches gathered from the memory map, copied to the device one at a time)
    reason: str
    resident: torch.Tensor | None = None  # the device copy (N x 3 x H x W), if one was made


def image_placement(
    cfg: TrialConfig, images: np.ndarray, device: torch.device, gpu_fraction: float = 1.0
) -> Placement:
    """Resident on the device when the images fit its budget (``image_budget_mb``, or on a
    GPU a share of the trial's part of its memory), else batch by batch from host memory:
    slower, not failing. On the CPU the memory map is read in place either way."""
    size = images.nbytes
    if cfg.image_budget_mb:
        budget, whose = cfg.image_budget_mb * 1e6, "image_budget_mb"
    elif device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        budget = min(DEVICE_IMAGE_SHARE * total * gpu_fraction, 0.9 * free)
        whose = f"{DEVICE_IMAGE_SHARE:.0%} of this trial's {gpu_fraction:g} of the GPU"
    else:
        return Placement(
            "device",
            f"{size / 1e6:.0f} MB of decoded images, read in place from the memory map",
            nchw(images),
        )
    if size > budget:
        return Placement(
            "host",
            f"{size / 1e6:.0f} MB of decoded images exceed the budget of "
            f"{budget / 1e6:.0f} MB ({whose}): batches are gathered in "
            "host memory and copied over, slower but within memory",
        )
    return Placement(
        "device",
        f"{size / 1e6:.0f} MB of decoded images fit the budget of {budget / 1e6:.0f} MB ({whose})",
        resident_images_on(images, device),
    )


def resident_images_on(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """The decoded images as an N x 3 x H x W uint8 tensor on ``device``, copied there once
    per worker process. On the CPU the memory-mapped file is used in place."""
    if device.type == "cpu":
        return nchw(images)
    key = (getattr(images, "filename", None) or id(images), images.shape, str(device))
    if key not in _RESIDENT:
        _RESIDENT.clear()  # one data set at a time: a new size replaces the old copy
        host = torch.from_numpy(np.ascontiguousarray(images))
        _RESIDENT[key] = host.to(device).permute(0, 3, 1, 2)
    return _RESIDENT[key]


class HostBatches(DeviceBatches):
    """Like DeviceBatches, for images that stay in host memory: each step gathers its batch
    from the memory map (in the same order), pins it and copies it to the device without
    waiting, so the copy of one batch overlaps the compute of the one before."""

    def __init__(
        self,
        images: np.ndarray,
        rows: np.ndarray,
        labels: np.ndarray,
        sampler: Sampler,
        batch_size: int,
        augment: BatchAugment,
        device: torch.device,
        channels_last: bool = False,
    ):
        super().__init__(nchw(images), rows, labels, sampler, batch_size, augment, channels_last)
        self.host_images, self.host_rows, self.device = images, np.asarray(rows), device
        self.labels = self.labels.to(device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.batches:
            gathered = torch.from_numpy(self.host_images[self.host_rows[batch]])
            if self.device.type == "cuda":
                gathered = gathered.pin_memory()
            x = gathered.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
            x = self.augment(x)
            index = torch.as_tensor(batch, dtype=torch.long, device=self.labels.device)
            yield x.contiguous(memory_format=self.layout), self.labels[index]


def lone_last(sampler: Sampler, batch_size: int) -> bool:
    """Whether the epoch's last batch would hold one image: BatchNorm cannot train on a
    batch of one (its variance is undefined), so that image sits this epoch out (a new
    shuffle puts another one last next time). A valid config must not fail on the split's
    size."""
    n = len(sampler)
    return n > 1 and n % batch_size == 1


def training_batches(
    cfg: TrialConfig,
    data,
    sampler: Sampler,
    device: torch.device,
    placement: Placement | None = None,
):
    """The training batches of one epoch (a ``loop.TrialData``), by the path that
    ``cfg.data_path`` selects, from where ``placement`` put the images."""
    pre, spec = data.preprocess, augment_spec(cfg.augment)
    placement = placement or image_placement(cfg, data.images, device)
    layout = cfg.channels_last and device.type == "cuda"
    if use_device_path(cfg) and placement.resident is not None:
        return DeviceBatches(
            placement.resident,
            data.train_rows,
            data.train_labels,
            sampler,
            cfg.batch_size,
            BatchAugment(spec, pre, cfg.random_erasing),
            channels_last=layout,
        )
    if use_device_path(cfg):
        return HostBatches(
            data.images,
            data.train_rows,
            data.train_labels,
            sampler,
            cfg.batch_size,
            BatchAugment(spec, pre, cfg.random_erasing),
            device,
            channels_last=layout,
        )
    dataset = DecodedImages(
        data.images,
        data.train_rows,
        data.train_labels,
        create_train_transform(spec, pre, cfg.random_erasing),
    )
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        drop_last=lone_last(sampler, cfg.batch_size),
        num_workers=cfg.loader_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.loader_workers > 0,
    )
