"""What reporting and checkpointing cost per epoch, through real sweeps: a checkpoint every
epoch (``--set checkpoint_budget=0``, what every trial did before) against the default
policy (a checkpoint where the trial may stop, otherwise within 2% of its time), rounds
interleaved.

The cost of an epoch's report is what Tune measures between two reports of a trial
(``time_this_iter_s``) minus what the loop measures for the epoch itself (``epoch_time_s``:
training, validation, scoring the best weights): writing the checkpoint, copying it into
the experiment, Tune's bookkeeping. The first epoch (which also builds the trial) is left
out. Prints the median over rounds of that cost as a share of the epochs' time, per model.

    python benchmarks/checkpoint.py --rounds 3                      # CPU here
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from _common import machine, median, photo_folder, run_sweep

# the demo study's model on the demo digits; VGG16 (138M parameters, 2.2 GB of checkpoint
# with Adam's state) on small photos
MODELS = {
    "googlenet": ["--set", "model=googlenet", "--set", "image_size=32"],
    "vgg16": [
        "--set",
        "model=vgg16",
        "--set",
        "image_size=64",
        "--data",
        "{photos}",
        "--max-per-class",
        "40",
    ],
}
POLICIES = {"every epoch": ["--set", "checkpoint_budget=0"], "default (2%)": []}


def overhead(experiment: Path) -> tuple[float, float]:
    """(report and checkpoint seconds, epoch seconds) summed over every trial's epochs 2+."""
    cost = work = 0.0
    for progress in experiment.glob("*/progress.csv"):
        table = pd.read_csv(progress)
        later = table[table["epoch"] > 1]
        cost += float((later["time_this_iter_s"] - later["epoch_time_s"]).sum())
        work += float(later["epoch_time_s"].sum())
    return cost, work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "bench-photos")
    args = parser.parse_args()
    photos = photo_folder(args.data, 10, 150)
    print(machine(), flush=True)
    storage = Path(tempfile.mkdtemp(prefix="bench-checkpoint-"))
    common = [
        "--space",
        "single",
        "--set",
        "pretrained=false",
        "--set",
        "early_stop_patience=0",
        "--set",
        "chance_epochs=0",
        "--max-epochs",
        str(args.epochs),
        "--scheduler",
        "fifo",
    ]
    print(
        f"{'model':<10} {'checkpoints':<14} {'report+checkpoint s/epoch':>26} "
        f"{'epoch s':>8} {'share':>7}"
    )
    for model in args.models.split(","):
        samples: dict[str, list[tuple[float, float, int]]] = {p: [] for p in POLICIES}
        for round_ in range(args.rounds):
            for policy, flags in POLICIES.items():
                name = f"{model}-{'every' if flags else 'default'}-r{round_}"
                extra = [a.replace("{photos}", str(photos)) for a in MODELS[model]]
                _, table = run_sweep([*common, *extra, *flags], storage, name)
                assert (table["epochs"] == args.epochs).all(), table
                cost, work = overhead(storage / name)
                samples[policy].append((cost, work, args.epochs - 1))
        for policy, runs in samples.items():
            share = median(c / w for c, w, _ in runs)
            per_epoch = median(c / n for c, _, n in runs)
            epoch = median(w / n for _, w, n in runs)
            print(
                f"{model:<10} {policy:<14} {per_epoch:>26.3f} {epoch:>8.2f} {share:>7.2%}",
                flush=True,
            )


if __name__ == "__main__":
    main()
