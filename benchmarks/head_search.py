"""A head search on a frozen pretrained network's cached features, through the sweep: its
wall time against the sum of its trials' own compute, and against the same trials in a
plain Python loop.

The search is a grid of ``feature_extractor`` trials (lr x hidden width x class weighting,
weight decay fixed; every trial runs the same number of epochs) run by ``sweeps/run.py`` as
a user runs it (a fresh process, a fresh local Ray, one trial at a time with every core).
The frozen network's outputs are cached first, by a one-trial sweep timed on its own, so
each trial of the search reads them. Its trials' own compute is read back from the
experiment: the sum of their epochs' seconds (``epoch_time_s`` in each trial's
progress.csv: training, validation and test scoring of an epoch) and of their wall time as
Tune saw it (``wall_s`` in results.csv: the trial's set-up too, not its worker's start).
The plain loop runs the very configurations the sweep ran (read from its trial records) in
one fresh process, paying its imports and data set-up as the sweep does (it writes no
checkpoints and no records: those are part of what the sweep costs).

    python benchmarks/head_search.py --data demo:elpv4 --image-size 224 --epochs 10 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ONE_AT_A_TIME, ROOT, add_frozen_network_args, machine, median, run_sweep

LRS = "[0.0001,0.0003,0.001,0.003,0.01]"


def base_settings(args) -> dict:
    return {
        "model": args.model,
        "pretrained": "true",
        "weights": args.weights,
        "strategy": "feature_extractor",
        "augment": "none",
        "image_size": args.image_size,
        "weight_decay": 1e-4,
        "max_epochs": args.epochs,
        "early_stop_patience": 0,
        "chance_epochs": 0,
    }


def sweep_args(args, settings: dict, grid: bool) -> list[str]:
    keys = dict(settings)
    if grid:
        keys.update(lr=LRS, head_hidden="[0,256]", objective="[ce,weighted_ce]")
    sets = [item for key, value in keys.items() for item in ("--set", f"{key}={value}")]
    return [
        "--space",
        "single",
        "--data",
        args.data,
        *ONE_AT_A_TIME,
        *sets,
    ]


def trial_configs(experiment: Path) -> list[dict]:
    """The configurations the sweep's trials ran, from their records (one per trial, its
    last checkpoint's), in the trials' order."""
    latest = {
        record.parent.parent.name: json.loads(record.read_text())["config"]
        for record in sorted(experiment.glob("*/checkpoint_*/trial.json"))
    }
    return [latest[name] for name in sorted(latest)]


def own_compute(experiment: Path) -> tuple[float, float, int]:
    """Sum over the trials of their epochs' seconds, of their wall time, and the epochs."""
    import pandas as pd

    epochs_s, epochs = 0.0, 0
    for progress in experiment.glob("*/progress.csv"):
        frame = pd.read_csv(progress)
        epochs_s += float(frame["epoch_time_s"].sum())
        epochs += len(frame)
    wall = float(pd.read_csv(experiment / "results.csv")["wall_s"].sum())
    return epochs_s, wall, epochs


PLAIN = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import torch
from trainables import data as D
from trainables.core.config import TrialConfig
from trainables.data.demo import resolve_data
from trainables.trial.build import build_trial, preprocess_for
configs = json.loads(open(sys.argv[1]).read())
first = TrialConfig.from_dict(configs[0])
pre = preprocess_for(first)
torch.set_num_threads(first.threads)
handle, _ = D.prepare(
    D.discover(resolve_data(sys.argv[2])), pre.load_size, D.default_cache_dir(),
    progress=False, interpolation=pre.interpolation,
)
epochs = 0
for config in configs:
    reports = []
    build_trial(TrialConfig.from_dict(config), handle).fit(
        torch.device("cpu"), lambda metrics, state: reports.append(metrics)
    )
    epochs += len(reports)
print("EPOCHS", epochs)
"""


def plain_loop(configs: list[dict], data: str, folder: Path) -> tuple[float, int]:
    jobs = folder / "configs.json"
    jobs.write_text(json.dumps(configs))
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PLAIN.format(root=str(ROOT)), str(jobs), data],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"plain loop failed:\n{done.stderr[-3000:]}")
    return seconds, int(done.stdout.split("EPOCHS")[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_frozen_network_args(parser)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    storage = Path(tempfile.mkdtemp(prefix="bench-head-search-"))
    print(machine(), flush=True)

    settings = base_settings(args)
    seconds, _ = run_sweep(
        sweep_args(args, {**settings, "max_epochs": 1}, grid=False), storage, "cache"
    )
    print(f"the frozen features cached by a one-trial, one-epoch sweep: {seconds:.1f} s")

    rows = []
    for round_ in range(args.rounds):
        name = f"search-r{round_}"
        sweep_s, table = run_sweep(sweep_args(args, settings, grid=True), storage, name)
        assert (table["status"] == "TERMINATED").all(), table
        epochs_s, wall_s, epochs = own_compute(storage / name)
        configs = trial_configs(storage / name)
        assert len(configs) == len(table)
        plain_s, plain_epochs = plain_loop(configs, args.data, storage)
        assert plain_epochs == epochs, (plain_epochs, epochs)
        rows.append((sweep_s, plain_s, epochs_s, wall_s))
        print(
            f"round {round_}: {len(table)} trials, {epochs} epochs; sweep {sweep_s:.1f} s, "
            f"plain loop {plain_s:.1f} s, trials' epochs {epochs_s:.1f} s, trials' wall "
            f"{wall_s:.1f} s",
            flush=True,
        )
    sweep_s, plain_s, epochs_s, wall_s = (median(r[i] for r in rows) for i in range(4))
    print()
    print("| | seconds (median) | sweep / this (median of the rounds' ratios) |")
    print("| --- | ---: | ---: |")
    print(f"| the sweep's wall time | {sweep_s:.1f} | 1 |")
    for label, i in (
        ("the same trials in a plain loop", 1),
        ("the trials' epochs (sum)", 2),
        ("the trials' wall time as Tune saw it (sum)", 3),
    ):
        ratio = median(r[0] / r[i] for r in rows)
        print(f"| {label} | {(plain_s, epochs_s, wall_s)[i - 1]:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
