"""A head search on a frozen pretrained network, with and without the frozen-feature cache
(trainables/trial/frozen.py), and the linear probe beside it.

The same trials (``--trials`` configurations of the head: lr, weight decay, hidden width,
class weighting, drawn once from a fixed seed) run as ``feature_extractor`` trials built and
fitted as every trial is (``build_trial`` + ``fit``, no Ray), once with ``frozen_cache=off``
and once with the cache, interleaved trial by trial so both sides meet the same machine.
The cache is built first, timed on its own. Each trial runs in its own process, so its peak
memory (ru_maxrss) is its own; the times are the fit's own wall time. ``--uncached N`` runs
only the first N trials without the cache (each is slow: that is the point) and says so.

    python benchmarks/frozen_cache.py --data demo:elpv4 --image-size 224 --per-class 100 \\
        --trials 20 --uncached 3 --epochs 3

``--frozen-fraction F`` runs ``strategy=base`` trials with the first F of the network's
blocks frozen instead: the rest of the network trains, on the cached outputs of the frozen
blocks or, uncached, behind them on every batch (no linear probe then).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, add_frozen_network_args, machine, median

TRIAL = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import torch
from trainables import data as D
from trainables.core import metrics as M
from trainables.core.config import TrialConfig
from trainables.trial.build import build_trial
job = json.loads(sys.argv[1])
torch.set_num_threads(job["threads"])
cfg = TrialConfig.from_dict(job["config"])
handle = D.DataHandle(**job["handle"])
trial = build_trial(cfg, handle)
reports = []
started = time.perf_counter()
trial.fit(torch.device("cpu"), lambda metrics, state: reports.append(metrics))
seconds = time.perf_counter() - started
print("RESULT", json.dumps({{
    "seconds": seconds,
    "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "epochs": len(reports),
    "val_loss": [r[M.VAL_LOSS] for r in reports],
    "best_val_acc": reports[-1][M.BEST_VAL_ACC],
    "images_on": reports[-1][M.IMAGES_ON],
}}))
"""


def head_configs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "lr": 10 ** rng.uniform(-4, -2),
            "weight_decay": 10 ** rng.uniform(-6, -2),
            "head_hidden": rng.choice([0, 0, 256]),
            "objective": rng.choice(["ce", "weighted_ce"]),
        }
        for _ in range(n)
    ]


def run_trial(config: dict, handle: dict, threads: int) -> dict:
    job = json.dumps({"config": config, "handle": handle, "threads": threads})
    out = subprocess.run(
        [sys.executable, "-c", TRIAL.format(root=str(ROOT)), job],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise SystemExit(f"trial failed:\n{out.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_frozen_network_args(parser)
    parser.add_argument("--per-class", type=int, default=0, help="at most this many per class")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--uncached", type=int, default=3, help="trials also run uncached")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--frozen-fraction", type=float, default=0.0, help="train all but these first blocks"
    )
    parser.add_argument("--json", help="write every sample here")
    args = parser.parse_args()

    from trainables import data as D
    from trainables.core.config import TrialConfig
    from trainables.data.demo import resolve_data
    from trainables.trial.build import preprocess_for

    cache = Path(tempfile.mkdtemp(prefix="frozen-cache-"))
    base = {
        "model": args.model,
        "pretrained": "true" if args.weights else "false",
        "weights": args.weights,
        "strategy": "feature_extractor",
        "augment": "none",
        "image_size": args.image_size,
        "max_epochs": args.epochs,
        "early_stop_patience": 0,
        "chance_epochs": 0,
        "threads": args.threads,
    }
    if args.frozen_fraction:
        base.update(strategy="base", frozen_fraction=args.frozen_fraction)
    pre = preprocess_for(TrialConfig.from_dict(base))
    source = D.discover(resolve_data(args.data))
    if args.per_class:
        source = D.limit_per_class(source, args.per_class)
    prepared, _ = D.prepare(source, pre.load_size, cache, progress=False)
    handle = {k: getattr(prepared, k) for k in prepared.__dataclass_fields__}
    frozen = f"first {args.frozen_fraction:g} of its blocks" if args.frozen_fraction else "all"
    print(
        f"{machine()}; {len(prepared.rows)} images at {args.image_size} px, {args.model}, "
        f"{frozen} frozen"
    )

    started = time.perf_counter()
    build = run_trial({**base, "max_epochs": 1}, handle, args.threads)  # builds the cache
    build_s = time.perf_counter() - started
    (npy,) = (cache / "features").glob("*.npy")
    print(
        f"cache built by a 1-epoch trial in {build_s:.1f} s (its fit {build['seconds']:.1f} s); "
        f"{npy.stat().st_size / 1e6:.1f} MB on disk"
    )

    samples = {"cached": [], "uncached": [], "probe": []}
    for i, head in enumerate(head_configs(args.trials)):
        config = {**base, **head}
        if i < args.uncached:
            samples["uncached"].append(
                run_trial({**config, "frozen_cache": "off"}, handle, args.threads)
            )
            print(f"trial {i} uncached {samples['uncached'][-1]['seconds']:.1f} s", flush=True)
        samples["cached"].append(run_trial(config, handle, args.threads))
        print(f"trial {i} cached {samples['cached'][-1]['seconds']:.2f} s", flush=True)
    if not args.frozen_fraction:
        probe = {**base, "strategy": "linear_probe", "weight_decay": 1e-3, "max_epochs": 20}
        samples["probe"].append(run_trial(probe, handle, args.threads))

    assert all(s["images_on"] == "features" for s in samples["cached"]), "not on the cache"
    for a, b in zip(samples["uncached"], samples["cached"]):
        assert a["images_on"] != "features"
        assert max(abs(x - y) for x, y in zip(a["val_loss"], b["val_loss"])) < 1e-4, (a, b)
    un = median(s["seconds"] for s in samples["uncached"])
    ca = median(s["seconds"] for s in samples["cached"][: len(samples["uncached"])])
    ca_all = median(s["seconds"] for s in samples["cached"])
    print()
    print("| | uncached | cached |")
    print("| --- | ---: | ---: |")
    print(f"| trials run | {len(samples['uncached'])} | {len(samples['cached'])} |")
    print(f"| median fit s per trial (the same trials) | {un:.1f} | {ca:.2f} |")
    print(f"| ratio | {un / ca:.0f}x | 1 |")
    print(
        f"| median peak memory MB | {median(s['peak_mb'] for s in samples['uncached']):.0f} | "
        f"{median(s['peak_mb'] for s in samples['cached']):.0f} |"
    )
    total_cached = build["seconds"] + sum(s["seconds"] for s in samples["cached"])
    print(
        f"\n{args.trials} trials cached: {total_cached:.0f} s of fits, the cache's build "
        f"included; uncached at the measured median: {args.trials * un:.0f} s (projected, "
        f"{len(samples['uncached'])} measured); ratio {args.trials * un / total_cached:.1f}x"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"build": build, **samples}, indent=1))
    if not samples["probe"]:
        return
    p = samples["probe"][0]
    print(
        f"linear probe: {p['seconds']:.2f} s, {p['epochs']} epochs, best val acc "
        f"{p['best_val_acc']:.3f}; trained heads' median best val acc "
        f"{median(s['best_val_acc'] for s in samples['cached']):.3f} (median cached fit "
        f"{ca_all:.2f} s)"
    )


if __name__ == "__main__":
    main()
