"""The wheel: built from the project, installed non-editable into a fresh virtual
environment, and used from a folder outside the checkout, as a cluster image would."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from helpers import ROOT, make_image_folder

pytestmark = pytest.mark.integration


def _run(command: list, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=600, **kwargs
    )
    assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-3000:])
    return done


def test_the_wheel_installs_and_runs_a_study_outside_the_checkout(tmp_path):
    # build from a copy of the tracked files, so the checkout gets no build/ or egg-info
    source = tmp_path / "source"
    files = _run(["git", "ls-files", "-z"], cwd=ROOT).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((ROOT / name).read_bytes())
    dist = tmp_path / "dist"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            dist,
            source,
        ]
    )
    wheel = next(dist.glob("visionsweep-*.whl"))

    # a fresh venv; its dependencies (torch, Ray, ...) are read from this one's
    # site-packages, where the project itself is only an editable hook, which a path
    # added by a .pth file does not run
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    site = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        ).stdout.strip()
    )
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", wheel])

    elsewhere = tmp_path / "elsewhere"
    images = make_image_folder(elsewhere / "images", per_class=6)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = _run(
        [
            python,
            "-c",
            "import sweeps, trainables.data, search_spaces; "
            "print(sweeps.__file__); print(trainables.data.__file__)",
        ],
        cwd=elsewhere,
        env=env,
    ).stdout.split()
    assert all(path.startswith(str(site)) for path in where), where

    _run(
        [
            venv / "bin" / "visionsweep",
            "--space",
            "single",
            "--smoke",
            "--data",
            images,
            "--set",
            "model=small_cnn",
            "--max-epochs",
            "1",
            "--name",
            "wheel",
        ],
        cwd=elsewhere,
        env=env,
    )
    experiment = elsewhere / "runs" / "wheel"
    assert (experiment / "results.csv").read_text().count("\n") == 2
    exported = _run(
        [python, "-m", "sweeps.export", experiment, "--out", elsewhere / "model"],
        cwd=elsewhere,
        env=env,
    )
    assert (elsewhere / "model" / "spec.json").exists(), exported.stdout
