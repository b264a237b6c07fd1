"""What the fault tests share (test_faults.py: a trial's worker; test_stops.py: the driver,
signals, disks): the slow trial, and checks of what a stopped sweep leaves behind."""

import hashlib
import re
import time
from pathlib import Path

import pandas as pd

from helpers import run_cli

# long enough per trial to be stopped mid-way, small enough for CI
SLOW_TRIAL = [
    "--space",
    "single",
    "--set",
    "model=small_cnn",
    "--set",
    "image_size=32",
    "--set",
    "early_stop_patience=0",
    "--set",
    "chance_epochs=0",
    "--set",
    "batch_size=8",
]


def progress(trial_dir: Path) -> pd.DataFrame:
    return pd.read_csv(trial_dir / "progress.csv")


def trial_dirs(experiment: Path) -> list[Path]:
    return sorted(p for p in experiment.glob("small_cnn_s*") if p.is_dir())


def with_fault(monkeypatch, fault: str) -> None:
    monkeypatch.setenv("VISIONSWEEP_FAULTS", fault)


def no_leftovers(experiment: Path) -> None:
    """No half-written files: no temp files, no empty files among ours."""
    for path in experiment.rglob("*"):
        assert not path.name.endswith(".tmp"), path
        if path.is_file() and path.suffix in (".csv", ".json", ".md"):
            assert path.stat().st_size > 0, path


def live_ray_processes(mark: str) -> set[int]:
    """Processes Ray started (named ray::...) that still run (zombies are dead) and carry
    ``mark`` in their environment: this test's own, not those of tests running beside it
    (pytest-xdist's other worker), which would come and go in a machine-wide count."""
    found = set()
    needle = mark.encode()
    for entry in Path("/proc").iterdir():
        try:
            name = (entry / "cmdline").read_bytes().split(b"\0")[0]
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if (
                name.startswith(b"ray::")
                and state != "Z"
                and needle in (entry / "environ").read_bytes().split(b"\0")
            ):
                found.add(int(entry.name))
        except (OSError, IndexError):
            continue
    return found


def resume_completes(
    experiment: Path, cwd: Path, trials: int, monkeypatch, address: str
) -> pd.DataFrame:
    """The fault is gone: ``--resume`` completes the sweep, on the session's Ray head
    (``address``; the stopped sweep ran on a Ray of its own, as the faults need)."""
    monkeypatch.delenv("VISIONSWEEP_FAULTS")
    before = experiment / "results.csv"
    finished = 0
    if before.exists():
        finished = int((pd.read_csv(before)["stop_reason"] != "unfinished").sum())
    started = time.monotonic()
    resumed = run_cli(["--resume", str(experiment), "--address", address], cwd=cwd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # the progress lines count the trials finished before the stop, and the seconds of
    # this command (they were the first command's: its count from 0, its clock)
    lines = re.findall(r"^\[ *(\d+)s (\d+)/(\d+) done\]", resumed.stdout, re.MULTILINE)
    assert lines and int(lines[0][1]) == finished and int(lines[-1][1]) == trials, lines
    assert all(int(s) <= time.monotonic() - started for s, _, _ in lines), lines
    table = pd.read_csv(experiment / "results.csv", dtype={"trial_id": str})
    assert len(table) == trials and table["trial_id"].is_unique
    assert (table["stop_reason"] == "completed").all(), table
    for trial_dir in trial_dirs(experiment):
        epochs = progress(trial_dir)["epoch"].tolist()
        assert epochs == list(range(1, len(epochs) + 1)), (trial_dir.name, epochs)
    return table


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }
