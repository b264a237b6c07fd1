"""A whole study on one machine, against its floor: ``googlenet_strategies`` with N seeds
through ``sweeps/run.py`` (its wall time, the GPU's utilisation sampled every 500 ms), then
the same trials, each for the epochs it ran in the sweep, one after another in a plain loop
in one process: the sum of their times is the floor the sweep is measured against (the
sweep's ASHA and early stopping decided those epochs; the loop only repeats them).

    python benchmarks/study.py --data PHOTOS --seeds 3 --image-size 224      # on a GPU
    python benchmarks/study.py --seeds 1 --image-size 32 --max-epochs 3      # CPU: a check

Writes every figure to --out (JSON) as well as printing them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, machine, photo_folder, run_sweep


def sample_gpu(path: Path):
    """nvidia-smi writing utilisation and memory every 500 ms, if there is one."""
    if not shutil.which("nvidia-smi"):
        return None
    return subprocess.Popen(
        [
            "nvidia-smi",
            "--query-gpu=utilization.gpu,memory.used",
            "--format=csv,noheader,nounits",
            "-lms",
            "500",
        ],
        stdout=open(path, "w"),
        stderr=subprocess.DEVNULL,
    )


def plain_loop(experiment: Path, data: str | None) -> float:
    """Every trial of the experiment, for the epochs it ran, in one process; seconds."""
    import pandas as pd
    import torch

    from trainables import data as D
    from trainables.core.config import TrialConfig
    from trainables.trial.build import build_trial, preprocess_for

    table = pd.read_csv(experiment / "results.csv", dtype={"trial_id": str})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    source = D.apply_split_file(D.discover(D.resolve_data(data)), experiment / "split.csv")
    handle = None
    started = time.perf_counter()
    for trial_dir in sorted(p for p in experiment.iterdir() if (p / "progress.csv").exists()):
        trial_id = "_".join(trial_dir.name.rsplit("_", 2)[-2:])  # VARIANT_sSEED_TRIALID
        row = table[table["trial_id"] == trial_id].iloc[0]
        config = json.loads((next(trial_dir.glob("checkpoint_*")) / "trial.json").read_text())[
            "config"
        ]
        config.update(max_epochs=int(row["epochs"]), early_stop_patience=0, chance_epochs=0)
        cfg = TrialConfig.from_dict(config)
        if handle is None:
            pre = preprocess_for(cfg)
            handle, _ = D.prepare(
                source,
                pre.load_size,
                D.default_cache_dir(),
                progress=False,
                interpolation=pre.interpolation,
            )
        build_trial(cfg, handle).fit(device, lambda metrics, state: None)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="image folder (default: synthetic photos, 10 classes)")
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--max-epochs", type=int)
    parser.add_argument("--out", type=Path, default=Path("study.json"))
    parser.add_argument("--plain", metavar="EXPERIMENT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:  # the floor, in a process of its own
        print(json.dumps({"plain_s": plain_loop(Path(args.plain), args.data)}))
        return
    data = args.data or str(
        photo_folder(Path(tempfile.gettempdir()) / "bench-photos", 10, args.per_class)
    )
    storage = Path(tempfile.mkdtemp(prefix="bench-study-"))
    flags = [
        "--space",
        "googlenet_strategies",
        "--data",
        data,
        "--num-samples",
        str(args.seeds),
        "--set",
        f"image_size={args.image_size}",
    ]
    if args.max_epochs:
        flags += ["--max-epochs", str(args.max_epochs)]
    gpu_log = storage / "gpu.csv"
    sampler = sample_gpu(gpu_log)
    seconds, table = run_sweep(flags, storage, "study")
    if sampler:
        sampler.terminate()
    floor = json.loads(
        subprocess.run(
            [sys.executable, __file__, "--plain", str(storage / "study"), "--data", data],
            cwd=ROOT / "benchmarks",
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )["plain_s"]
    figures = {
        "machine": machine(),
        "trials": len(table),
        "epochs": int(table["epochs"].sum()),
        "sweep_s": round(seconds, 1),
        "plain_loop_floor_s": round(floor, 1),
        "sweep_over_floor": round(seconds / floor, 3),
        "command": " ".join(flags),
    }
    if sampler and gpu_log.exists():
        rows = [line.split(",") for line in gpu_log.read_text().splitlines() if "," in line]
        utilisation = sorted(float(r[0]) for r in rows)
        figures.update(
            gpu_samples=len(rows),
            gpu_util_median=utilisation[len(utilisation) // 2] if rows else None,
            gpu_util_mean=round(sum(utilisation) / max(1, len(rows)), 1),
            gpu_memory_max_mib=max((float(r[1]) for r in rows), default=None),
        )
    args.out.write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
