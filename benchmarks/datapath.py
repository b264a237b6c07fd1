"""Benchmarks 1 and 2 (issue: fast sweeps): training images per second through four data paths,
same model, same batch size, same training step, measured in interleaved rounds.

  notebook     torchvision ImageFolder + PIL transforms + DataLoader workers: JPEG decoding
               and augmentation every epoch, the way the notebooks do it
  ours-loader  our loader path: decode-once cache, per-image v2 transforms in a DataLoader
  ours-device  our device path (the default): decoded images on the training device,
               augmented in batches there
  ceiling      one pre-made batch already on the device: the model alone, no data path

``--models none`` times the data path alone (a step that only reads each batch).
Every path feeds the real training step (``trainables.trial.loop.train_one_epoch``, bf16 autocast
and channels-last on CUDA). Prints medians and ratios; ``--json`` writes every sample.

    python benchmarks/datapath.py --models none,small_cnn --image-size 112    # CPU here
    python benchmarks/datapath.py --models resnet18,resnet50 --workers 8      # on a GPU
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler
from torchvision import datasets
from torchvision import transforms as T

from _common import Timer, machine, median, photo_folder
from trainables import data as D
from trainables.core.config import TrialConfig
from trainables.data.batches import training_batches
from trainables.recipe.losses import create_loss
from trainables.recipe.optim import create_optimizer
from trainables.trial.build import build_trial, preprocess_for
from trainables.trial.loop import amp_dtype, train_one_epoch

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def notebook_loader(root: Path, size: int, batch: int, workers: int, cuda: bool):
    transform = T.Compose(
        [
            T.Resize(int(size / 0.875)),
            T.RandomResizedCrop(size, scale=(0.7, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomRotation(15),
            T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
            T.RandomAffine(degrees=0, translate=(0.1, 0.1)),
            T.RandomApply([T.GaussianBlur(kernel_size=3)], p=0.2),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )
    dataset = datasets.ImageFolder(str(root), transform=transform)
    return DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=cuda,
        drop_last=True,
    )


class DataOnly(torch.nn.Module):
    """``--models none``: a step that only touches each batch, to time the data path alone."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        logits = x.mean((2, 3))[:, :1].repeat(1, 10) * self.scale
        return logits, []


def forever(make_epoch):
    """Batches without end: a new epoch (new shuffle) whenever one runs out."""
    while True:
        yield from make_epoch()


def measure(
    make_stream, net, criterion, optimizer, scaler, device, dtype, steps: int, batch_size: int
) -> float:
    """Images per second of one path, started afresh: its workers start and fill their queues
    in the warm-up steps, and stop before the next path runs (idle workers of one path would
    otherwise take CPU from the next)."""
    stream = make_stream()
    train_one_epoch(
        net, itertools.islice(stream, 5), criterion, optimizer, scaler, device, 0.0, dtype
    )
    with Timer(device) as timer:
        train_one_epoch(
            net, itertools.islice(stream, steps), criterion, optimizer, scaler, device, 0.0, dtype
        )
    stream.close()  # ends the DataLoader iterator and its worker processes
    gc.collect()
    return steps * batch_size / timer.seconds


def profile(stream, net, criterion, optimizer, scaler, device, dtype, steps: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    train_one_epoch(
        net, itertools.islice(stream, 3), criterion, optimizer, scaler, device, 0.0, dtype
    )
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        with Timer(device) as timer:
            train_one_epoch(
                net,
                itertools.islice(stream, steps),
                criterion,
                optimizer,
                scaler,
                device,
                0.0,
                dtype,
            )
    print(f"{steps} steps in {timer.seconds:.2f} s")
    for key in (
        "self_cpu_time_total",
        "self_device_time_total" if device.type == "cuda" else "cpu_time_total",
    ):
        print(prof.key_averages().table(sort_by=key, row_limit=12, max_name_column_width=40))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="small_cnn")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=150)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (both loaders)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per sample")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--paths", default="notebook,ours-loader,ours-device,ceiling")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "bench-photos")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--profile",
        metavar="PATH",
        help="instead of timing, profile this path's steps (torch.profiler)",
    )
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    started = time.perf_counter()
    root = photo_folder(args.data, args.classes, args.per_class)
    print(
        f"{machine()}\n{args.classes * args.per_class} JPEG photos 500x375 "
        f"(made in {time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    source = D.discover(root)
    cache = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    samples: dict = {}
    for model in args.models.split(","):
        cfg = TrialConfig.from_dict(
            {
                "model": "small_cnn" if model == "none" else model,
                "pretrained": "false",
                "image_size": args.image_size,
                "batch_size": args.batch_size,
                "loader_workers": args.workers,
            }
        )
        with Timer(device) as decode:
            pre = preprocess_for(cfg)
            handle, _ = D.prepare(
                source, pre.load_size, cache, progress=False, interpolation=pre.interpolation
            )
        built = build_trial(cfg, handle)  # the model and data views a trial of cfg gets
        trial = built.data
        print(
            f"\n{model}: decode-once cache of {len(handle.files)} images in "
            f"{decode.seconds:.1f} s (once per data set and size, shared by every trial)",
            flush=True,
        )
        net = (DataOnly() if model == "none" else built.net).to(device)
        if device.type == "cuda":
            net = net.to(memory_format=torch.channels_last)
        net.train()
        criterion = create_loss(cfg, trial.class_counts)
        optimizer = create_optimizer(cfg, net.parameters())
        dtype = amp_dtype(cfg, device)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        sampler = RandomSampler(range(len(trial.train_rows)))

        def ours(path):
            batches = training_batches(
                TrialConfig.from_dict({**cfg.to_dict(), "data_path": path}), trial, sampler, device
            )
            return forever(lambda: iter(batches))  # ends with the generator: see measure()

        fixed = next(ours("device"))
        fixed = tuple(t.to(device) for t in fixed)
        streams = {
            "notebook": lambda: forever(
                lambda: iter(
                    notebook_loader(
                        root, args.image_size, args.batch_size, args.workers, device.type == "cuda"
                    )
                )
            ),
            "ours-loader": lambda: ours("loader"),
            "ours-device": lambda: ours("device"),
            "ceiling": lambda: (batch for batch in itertools.repeat(fixed)),
        }
        if args.profile:
            profile(
                streams[args.profile](),
                net,
                criterion,
                optimizer,
                scaler,
                device,
                dtype,
                args.steps,
            )
            continue
        paths = args.paths.split(",")
        result = samples.setdefault(model, {name: [] for name in paths})
        for _ in range(args.rounds):
            for name in paths:
                result[name].append(
                    measure(
                        streams[name],
                        net,
                        criterion,
                        optimizer,
                        scaler,
                        device,
                        dtype,
                        args.steps,
                        args.batch_size,
                    )
                )
        base = median(result["notebook"]) if "notebook" in result else None
        ceiling = median(result["ceiling"]) if "ceiling" in result else None
        print(f"{'path':<12} {'images/s (median)':>18} {'vs notebook':>12} {'vs ceiling':>11}")
        for name in paths:
            m = median(result[name])
            vs_nb = f"{m / base:.2f}x" if base else "-"
            vs_ceiling = f"{m / ceiling:.1%}" if ceiling else "-"
            print(f"{name:<12} {m:>18.1f} {vs_nb:>12} {vs_ceiling:>11}", flush=True)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "args": vars(args) | {"data": str(args.data), "json": str(args.json)},
                    "images_per_s": samples,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
