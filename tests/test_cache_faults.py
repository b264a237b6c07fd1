"""The places a sweep writes before its experiment folder (the decode cache, the demo data,
Ray's temporary folder) when they are full, read-only or unwritable, and a Ctrl-C in the
middle of decoding: each ends in one line naming the place and the fix, exit status 2, and
nothing half-written, neither in the place nor in --storage.

A full or read-only file system is a real one: a small or read-only tmpfs mounted in a
private mount namespace (``unshare -m``, which needs root), where every case runs the
command's own entry point in one process."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import ROOT, make_image_folder

pytestmark = pytest.mark.integration

CASES = {  # name: (mount options, environment, --data (None: the test's images), the fix)
    "full cache": (
        "size=100k",
        {"VISIONSWEEP_CACHE": "{mnt}/cache"},
        None,
        "free some space there, or set VISIONSWEEP_CACHE",
    ),
    "read-only cache": (
        "ro",
        {"VISIONSWEEP_CACHE": "{mnt}/cache"},
        None,
        "make it writable, or set VISIONSWEEP_CACHE",
    ),
    "unwritable HOME": (
        "ro",
        {"HOME": "{mnt}", "VISIONSWEEP_CACHE": None, "XDG_CACHE_HOME": None},
        None,
        "make it writable, or set VISIONSWEEP_CACHE",
    ),
    "unwritable TMPDIR": ("ro", {"TMPDIR": "{mnt}"}, None, "make it writable, or set TMPDIR"),
    "demo data in a full cache": (
        "size=200k",
        {"VISIONSWEEP_CACHE": "{mnt}/cache"},
        "demo:digits",
        "free some space there, or set VISIONSWEEP_CACHE",
    ),
}

SCRIPT = r"""
import contextlib, io, json, os, subprocess, sys
sys.path.insert(0, {root!r})
from sweeps import cli
from sweeps.run import main, stop_ray

results = {{}}
for name, (options, env, data, mnt, storage) in json.loads({cases!r}).items():
    os.makedirs(mnt)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", mnt], check=True)
    saved = dict(os.environ)
    for key, value in env.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    argv = ["--space", "single", "--set", "model=small_cnn", "--set", "image_size=32",
            "--max-epochs", "1", "--data", data, "--storage", storage, "--name", "x"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            cli.run(lambda: main(argv), cleanup=stop_ray)
        except SystemExit as exc:
            code = exc.code
    os.environ.clear()
    os.environ.update(saved)
    left = sorted(os.path.relpath(os.path.join(d, f), mnt) for d, _, files in os.walk(mnt)
                  for f in files)
    results[name] = dict(code=code, stderr=err.getvalue(), left=left,
                         storage=os.path.exists(storage))
print("RESULTS" + json.dumps(results))
"""


def _can_mount() -> bool:
    if not (shutil.which("unshare") and shutil.which("mount")):
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount(), reason="needs unshare -m (root) to mount a tmpfs")
def test_a_full_read_only_or_unwritable_place_is_one_line_and_leaves_nothing(tmp_path):
    data = make_image_folder(tmp_path / "imgs", per_class=40)
    cases = {}
    for i, (name, (options, env, source, _)) in enumerate(CASES.items()):
        mnt = str(tmp_path / f"mnt{i}")
        cases[name] = (
            options,
            {k: v and v.format(mnt=mnt) for k, v in env.items()},
            source or str(data),
            mnt,
            str(tmp_path / f"runs{i}"),
        )
    script = SCRIPT.format(root=str(ROOT), cases=json.dumps(cases))
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    done = subprocess.run(
        ["unshare", "-m", sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "RESULTS" in done.stdout, done.stdout[-2000:] + done.stderr[-3000:]
    results = json.loads(done.stdout.split("RESULTS", 1)[1])
    for i, (name, (_, _, _, fix)) in enumerate(CASES.items()):
        got = results[name]
        lines = [line for line in got["stderr"].splitlines() if line.strip()]
        assert got["code"] == 2, (name, got)
        assert lines and lines[-1].startswith("error: "), (name, got)
        assert str(tmp_path / f"mnt{i}") in lines[-1] and fix in lines[-1], (name, lines[-1])
        assert "Traceback" not in got["stderr"], (name, got["stderr"])
        # nothing half-written: at most an empty lock file stays in the place, and the
        # input-size check's record where it fitted (written whole: trainables/model/sizes.py)
        assert all(
            path.endswith(".lock") or path.split("/")[-1] == "input-sizes.json"
            for path in got["left"]
        ), (name, got["left"])
        assert not got["storage"], name  # no experiment folder for a sweep that never ran


def test_ctrl_c_while_decoding_leaves_no_partial_file(tmp_path, monkeypatch):
    """A real SIGINT, sent by this process to itself partway through decoding."""
    from trainables.data import decode

    data = make_image_folder(tmp_path / "imgs", per_class=40)
    paths = tuple(sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.is_file()))
    real, calls = decode.decode_image, []

    def decode_then_interrupt(path, size, interpolation="bilinear"):
        calls.append(path)
        if len(calls) == 30:
            os.kill(os.getpid(), signal.SIGINT)
        elif len(calls) > 30:
            time.sleep(0.02)  # the rest are slow: the signal lands mid-way, not after
        return real(path, size, interpolation)

    monkeypatch.setattr(decode, "decode_image", decode_then_interrupt)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        decode.decode_cached(data, paths, "d1", 32, cache)
    assert 30 <= len(calls) < len(paths)  # it was cut short
    left = [p.name for p in (cache / "decoded").iterdir()]
    assert left == ["d1-32-bilinear.lock"], left  # no .npy, no .tmp.npy, no index
    monkeypatch.setattr(decode, "decode_image", real)  # the next run decodes it whole
    done = decode.decode_cached(data, paths, "d1", 32, cache)
    assert np.load(done.images, mmap_mode="r").shape == (len(paths), 32, 32, 3)
    assert done.bad == {}


CHECKPOINT_SCRIPT = r"""
set -u
mount -t tmpfs -o size=40m tmpfs {storage}
"{python}" "{root}/sweeps/run.py" --space single --set model=resnet18 --set pretrained=false \
    --set image_size=32 --max-epochs 2 --set checkpoint_budget=0 --max-failures 0 \
    --data "{data}" --storage {storage} --name ck
echo "EXIT $?"
find {storage} -name "checkpoint_*" -type d | sed 's/^/CHECKPOINT /'
"""


@pytest.mark.skipif(not _can_mount(), reason="needs unshare -m (root) to mount a tmpfs")
def test_a_checkpoint_that_does_not_fit_leaves_no_partial_copy(tmp_path):
    """resnet18's checkpoint (two ~45 MB files) on a 40 MB file system: Tune's copy of it
    fails part-way. The trial ends as error with the
    reason, without a traceback on the console, and no partial checkpoint stays where a
    resume or a later command would read it."""
    data = make_image_folder(tmp_path / "imgs", per_class=20)
    storage = tmp_path / "store"
    storage.mkdir()
    script = CHECKPOINT_SCRIPT.format(storage=storage, python=sys.executable, root=ROOT, data=data)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    done = subprocess.run(
        ["unshare", "-m", "bash", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = done.stdout + done.stderr
    assert "EXIT 1" in done.stdout, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert "No space left on device" in out  # in the error column or the driver's line
    assert "CHECKPOINT" not in done.stdout, done.stdout[-2000:]


EXPORT_SCRIPT = r"""
import os, subprocess, sys
sys.path.insert(0, {root!r})
from trainables.core.errors import UserError
from trainables.deploy.bundle import ExportSpec, write_export
from trainables.model.factory import create_model
from trainables.model.record import Preprocess

os.makedirs({mnt!r})
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", {mnt!r}], check=True)
spec = ExportSpec(create_model("small_cnn", 3, "false").build,
                  Preprocess(32, 36, "bilinear", (0.5,) * 3, (0.25,) * 3), ["a", "b", "c"],
                  {{"trial_id": "t"}})
try:
    write_export(os.path.join({mnt!r}, "export"), spec, spec.build().state_dict())
    print("WROTE")
except UserError as exc:
    print("REFUSED " + str(exc))
print("LEFT", sorted(os.listdir({mnt!r})))
"""


@pytest.mark.skipif(not _can_mount(), reason="needs unshare -m (root) to mount a tmpfs")
def test_an_export_onto_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    mnt = str(tmp_path / "small")
    done = subprocess.run(
        ["unshare", "-m", sys.executable, "-c", EXPORT_SCRIPT.format(root=str(ROOT), mnt=mnt)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "REFUSED " in done.stdout, done.stdout[-2000:] + done.stderr[-3000:]
    line = done.stdout.split("REFUSED ", 1)[1].splitlines()[0]
    assert "MB free, the export needs about" in line and "pass --out elsewhere" in line
    assert "LEFT []" in done.stdout and "Traceback" not in done.stderr
