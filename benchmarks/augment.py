"""The batched augmentation alone: ours (``trainables.data.batches.BatchAugment``) against
kornia.augmentation on the same recipe, images per second on the same uint8 batches of the
device they will train on, interleaved rounds. ``--profile`` prints torch.profiler's table of
our recipe instead (where its time goes).

Recipe (the ``notebook`` one, per image): random resized crop (area 0.7-1, ratio 3/4-4/3),
horizontal flip, rotation up to 15 degrees, translation up to 10%, brightness, contrast and
saturation jitter of 0.2, a 3x3 Gaussian blur (sigma 0.1-2) on a fifth of the images,
normalisation. Kornia applies each step with its own resampling (crop, then affine), ours
composes the geometry into one resampling; both draw fresh parameters per image.

    pip install kornia                                     # benchmark only
    python benchmarks/augment.py --batch 64 --size 224     # on a GPU
    python benchmarks/augment.py --batch 32 --size 112     # CPU here
"""

from __future__ import annotations

import argparse

import torch

from _common import Timer, machine, median
from trainables.data.batches import BatchAugment
from trainables.model.record import Preprocess
from trainables.recipe.augment import BLUR_SIGMA, augment_spec

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def ours(size: int):
    return BatchAugment(
        augment_spec("notebook"), Preprocess(size, round(size / 0.875), "bilinear", MEAN, STD)
    )


def kornia_recipe(size: int, device: torch.device):
    import kornia.augmentation as K

    spec = augment_spec("notebook")
    pipeline = K.AugmentationSequential(
        K.RandomResizedCrop((size, size), scale=spec.crop_scale, ratio=spec.crop_ratio),
        K.RandomHorizontalFlip(),
        K.RandomAffine(degrees=spec.rotation, translate=(spec.translate, spec.translate)),
        K.ColorJitter(spec.jitter, spec.jitter, spec.jitter, p=1.0),
        K.RandomGaussianBlur((3, 3), BLUR_SIGMA, p=spec.blur),
        K.Normalize(torch.tensor(MEAN), torch.tensor(STD)),
    ).to(device)

    def run(images: torch.Tensor) -> torch.Tensor:
        return pipeline(images.float().div_(255))

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    load = round(args.size / 0.875)
    images = torch.randint(0, 256, (args.batch, 3, load, load), dtype=torch.uint8, device=device)
    paths = {"ours": ours(args.size)}
    try:
        paths["kornia"] = kornia_recipe(args.size, device)
    except ImportError:
        print("kornia not installed (pip install kornia): timing ours alone")
    print(machine(), flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + (
            [ProfilerActivity.CUDA] if device.type == "cuda" else []
        )
        paths["ours"](images)
        with profile(activities=activities) as prof:
            for _ in range(args.steps):
                paths["ours"](images)
            if device.type == "cuda":
                torch.cuda.synchronize()
        key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=40))
        return
    samples = {name: [] for name in paths}
    for run in paths.values():  # warm-up: kernels, allocations
        run(images)
    for _ in range(args.rounds):
        for name, run in paths.items():
            with Timer(device) as timer:
                for _ in range(args.steps):
                    run(images)
            samples[name].append(args.steps * args.batch / timer.seconds)
    base = median(samples["ours"])
    print(
        f"batch {args.batch}, {load}px uint8 -> {args.size}px, {args.steps} steps x "
        f"{args.rounds} interleaved rounds"
    )
    print(f"{'augmentation':<12} {'images/s (median)':>18} {'vs ours':>8}")
    for name, values in samples.items():
        print(f"{name:<12} {median(values):>18.0f} {median(values) / base:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
