"""How the work grows with the data and with the number of trials, as curves with slopes.

  data    data preparation (find, hash, split, decode once) of N synthetic photos in 38
          classes (PlantVillage's), each size in a fresh process: wall time, and the peak of
          its own memory (anonymous: what the memory map of the decoded images does not
          account for), sampled every 50 ms
  trials  a searched study (Optuna TPE, ASHA) of N trials of about a second each, through
          sweeps/run.py: wall time per trial, the driver's peak memory (sampled every 0.5 s)
  table   writing the result table (results.csv, results.md) of N rows, median of 5

Each curve gets a least-squares line; the slope predicts PlantVillage-size data (54,305
images) and a 2,000-trial search. Results go to --out (JSON) and stdout.

    python benchmarks/scale.py --parts data,trials,table
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from _common import ROOT, machine, photo_folder

PLANTVILLAGE_IMAGES, BIG_SEARCH = 54_305, 2_000


def _status(pid: int) -> dict[str, int]:
    """kB figures of /proc/PID/status (VmRSS, VmHWM, RssAnon)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


@contextmanager
def peak_of(pid: int, key: str, every: float):
    """Samples (kB) of ``key`` in /proc/PID/status every ``every`` seconds while inside;
    yields the list they are appended to."""
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            value = _status(pid).get(key)
            if value is not None:
                samples.append(value)
            time.sleep(every)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        yield samples
    finally:
        stop.set()
        watcher.join()


def prepare_child(root: str, cache: str) -> None:
    """``--prepare``: prepare one data set, print wall seconds and peak anonymous MB."""
    from trainables import data as D

    with peak_of(os.getpid(), "RssAnon", 0.05) as samples:
        started = time.perf_counter()
        handle, _ = D.prepare(D.discover(root), 64, Path(cache), progress=False)
        seconds = time.perf_counter() - started
    print(
        json.dumps(
            {"seconds": seconds, "peak_anon_mb": max(samples) / 1024, "images": len(handle.rows)}
        )
    )


def fit(xs, ys, at: float) -> tuple[float, float]:
    """The least-squares line through (xs, ys): its slope, and its value at ``at``."""
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(slope), float(intercept + slope * at)


def data_curve(sizes: list[int], base: Path) -> dict:
    points = []
    for n in sizes:
        per_class = -(-n // 38)
        root = photo_folder(base / f"photos-{n}", 38, per_class, size=(64, 48))
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--prepare",
                str(root),
                str(Path(tempfile.mkdtemp(prefix="scale-cache-"))),
            ],
            check=True,
            capture_output=True,
            text=True,
            cwd=ROOT / "benchmarks",
        )
        point = json.loads(out.stdout.strip().splitlines()[-1])
        points.append(point)
        print(
            f"data {point['images']:>6} images: {point['seconds']:7.1f} s, peak "
            f"{point['peak_anon_mb']:7.1f} MB of the process's own memory",
            flush=True,
        )
    images = [p["images"] for p in points]
    time_slope, time_at = fit(images, [p["seconds"] for p in points], PLANTVILLAGE_IMAGES)
    mem_slope, mem_at = fit(images, [p["peak_anon_mb"] for p in points], PLANTVILLAGE_IMAGES)
    return {
        "points": points,
        "seconds_per_1000_images": time_slope * 1000,
        "mb_per_1000_images": mem_slope * 1000,
        "predicted_plantvillage_s": time_at,
        "predicted_plantvillage_peak_mb": mem_at,
    }


def trial_curve(counts: list[int], storage: Path) -> dict:
    points = []
    for n in counts:
        command = [
            sys.executable,
            str(ROOT / "sweeps" / "run.py"),
            "--space",
            "lr_batch_tpe",
            "--set",
            "model=small_cnn",
            "--set",
            "image_size=16",
            "--max-epochs",
            "1",
            "--max-per-class",
            "10",
            "--num-samples",
            str(n),
            "--storage",
            str(storage),
            "--name",
            f"trials-{n}",
        ]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        started = time.perf_counter()
        driver = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        with peak_of(driver.pid, "VmRSS", 0.5) as samples:
            code = driver.wait()
            seconds = time.perf_counter() - started
        if code != 0:
            raise SystemExit(f"the {n}-trial sweep failed ({code}): {' '.join(command)}")
        rows = sum(1 for _ in open(storage / f"trials-{n}" / "results.csv")) - 1
        point = {
            "trials": n,
            "rows": rows,
            "seconds": seconds,
            "per_trial_s": seconds / n,
            "driver_peak_mb": max(samples) / 1024,
            "driver_last_mb": samples[-1] / 1024,
        }
        points.append(point)
        print(
            f"trials {n:>4}: {seconds:7.1f} s ({seconds / n:.2f} s per trial), driver peak "
            f"{point['driver_peak_mb']:.0f} MB",
            flush=True,
        )
    counts_ = [p["trials"] for p in points]
    time_slope, time_at = fit(counts_, [p["seconds"] for p in points], BIG_SEARCH)
    mem_slope, mem_at = fit(counts_, [p["driver_peak_mb"] for p in points], BIG_SEARCH)
    return {
        "points": points,
        "seconds_per_trial": time_slope,
        "mb_per_trial": mem_slope,
        "predicted_2000_trials_s": time_at,
        "predicted_2000_trials_driver_mb": mem_at,
    }


def table_curve(rows: list[int]) -> dict:
    from sweeps.experiment.storage import Store
    from sweeps.experiment.tables import write_tables

    points = []
    for n in rows:
        rng = np.random.default_rng(0)
        table = [
            {
                "trial_id": f"t{i:05d}",
                "variant": "small_cnn",
                "status": "TERMINATED",
                "stop_reason": "completed",
                "epochs": 5,
                "best_epoch": 3,
                "best_val_loss": float(rng.random()),
                "best_val_acc": float(rng.random()),
                "test_acc": float(rng.random()),
                "test_macro_f1": float(rng.random()),
                "test_acc_low": 0.1,
                "test_acc_high": 0.9,
                "test_macro_f1_low": 0.1,
                "test_macro_f1_high": 0.9,
                "lr": float(rng.random()),
                "error": "",
            }
            for i in range(n)
        ]
        store = Store.from_location(tempfile.mkdtemp(prefix="scale-table-"))
        times = []
        for _ in range(5):
            started = time.perf_counter()
            write_tables(table, store, aggregate=False)
            times.append(time.perf_counter() - started)
        points.append({"rows": n, "seconds": statistics.median(times)})
        print(f"table {n:>5} rows: {statistics.median(times) * 1000:7.1f} ms", flush=True)
    slope, at = fit([p["rows"] for p in points], [p["seconds"] for p in points], BIG_SEARCH)
    return {"points": points, "ms_per_row": slope * 1000, "predicted_2000_rows_ms": at * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="data,trials,table")
    parser.add_argument("--images", default="2000,10000,50000")
    parser.add_argument("--trials", default="50,200,500")
    parser.add_argument("--rows", default="50,200,500,2000")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-scale")
    parser.add_argument("--out", type=Path, default=Path("scale.json"))
    parser.add_argument("--prepare", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        return prepare_child(*args.prepare)
    print(machine(), flush=True)
    results = {"machine": machine()}
    parts = args.parts.split(",")
    if "table" in parts:
        results["table"] = table_curve([int(n) for n in args.rows.split(",")])
    if "data" in parts:
        results["data"] = data_curve([int(n) for n in args.images.split(",")], args.work)
    if "trials" in parts:
        results["trials"] = trial_curve(
            [int(n) for n in args.trials.split(",")], Path(tempfile.mkdtemp(prefix="scale-sweeps-"))
        )
    args.out.write_text(json.dumps(results, indent=1))
    print(
        json.dumps(
            {
                k: {m: v for m, v in r.items() if m != "points"}
                for k, r in results.items()
                if isinstance(r, dict)
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
