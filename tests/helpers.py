"""What the tests share that is not a fixture: real image files written with Pillow, the
command line run as a user runs it, servers on loopback and what they listen on, and a
hand-made experiment folder. Imported by the tests (``from helpers import ...``); the
fixtures live in conftest.py."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


def write_image(path: Path, colour, rng: np.random.Generator, size=(24, 20), fmt=None) -> None:
    """A noisy solid-colour image: trivially separable by colour, real bytes on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.clip(np.array(colour) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255)
    Image.fromarray(pixels.astype(np.uint8)).save(path, format=fmt)


def make_image_folder(root: Path, per_class: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        for i in range(per_class):
            ext = ".png" if i % 2 else ".JPG"
            write_image(root / name / f"img_{i:03d}{ext}", colour, rng)
    return root


def make_one_class_folder(root: Path) -> Path:
    """An image folder with a single class: something no classifier can be trained on."""
    make_image_folder(root, per_class=4)
    for name in ("green", "blue"):
        for f in (root / name).iterdir():
            f.unlink()
        (root / name).rmdir()
    return root


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(process, port: int, log: Path, timeout: float = 120) -> None:
    """Until a server ``process`` we started answers on ``port`` (its log, if it dies)."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(log.read_text()[-2000:]) from None
            time.sleep(0.5)


HEAD_ENV: dict[str, str] = {}  # how a driver authenticates to the session's Ray head


def _cli_command(args: list[str]) -> tuple[list[str], dict]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if "--address" in args:
        env.update(HEAD_ENV)
    return [sys.executable, str(ROOT / "sweeps" / "run.py"), *args], env


def run_cli(
    args: list[str], cwd: Path, timeout: int = 300, own_group: bool = False, merged: bool = False
):
    """Run ``python sweeps/run.py ARGS`` as a user would, in a fresh process (``own_group``:
    in a process group of its own, as a shell starts a job; ``merged``: stderr into stdout,
    in the order a terminal shows them)."""
    import subprocess

    command, env = _cli_command(args)
    return subprocess.run(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merged else subprocess.PIPE,
        text=True,
        timeout=timeout,
        start_new_session=own_group,
    )


def start_cli(args: list[str], cwd: Path, log: Path):
    """Start ``python sweeps/run.py ARGS`` in the background; output goes to ``log``."""
    import subprocess

    command, env = _cli_command(args)
    with open(log, "w") as out:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)


def descendants(root: int) -> set[int]:
    """A process and every process below it, from /proc."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except (OSError, IndexError, ValueError):
                continue
    found, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parent.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return found


def listening(pids: set[int]) -> list[str]:
    """The addresses these processes listen on, from /proc (TCP over IPv4 and IPv6)."""
    import ipaddress

    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = []
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            hex_ip, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_ip)
            # /proc prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, size, 4))
            ip = ipaddress.ip_address(raw)
            if getattr(ip, "ipv4_mapped", None):
                ip = ip.ipv4_mapped
            found.append((str(ip), int(hex_port, 16)))
    return sorted(f"{ip}:{port}" for ip, port in found)


def post(url: str, files: list[tuple[str, str, bytes]]) -> tuple[int, dict]:
    """POST multipart/form-data, built by hand: (field, file name, bytes) each. Returns the
    status and the JSON answer."""
    boundary = uuid.uuid4().hex
    body = b""
    for field, name, data in files:
        body += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
                f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            + data
            + b"\r\n"
        )
    body += f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def get(url: str) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, json.loads(response.read())


# a hand-made experiment folder for the ensemble tests, laid out as sweeps/run.py writes it
VAL = ["0/v0.png", "0/v1.png", "1/v2.png", "1/v3.png"]
TEST = ["0/t0.png", "0/t1.png", "1/t2.png", "1/t3.png"]
LABELS = np.array([0, 0, 1, 1])


def write_experiment(root, trials: dict, val_ids=VAL, test_ids=TEST):
    """trials: trial_id -> (best_val_loss, val_probs, test_probs)."""
    root.mkdir(parents=True)
    split = [
        (p, str(label), label, part)
        for part, paths in (("val", VAL), ("test", TEST))
        for p, label in zip(paths, LABELS)
    ]
    split.append(("0/x.png", "0", 0, "train"))
    pd.DataFrame(split, columns=["path", "class", "label", "split"]).to_csv(
        root / "split.csv", index=False
    )
    rows = []
    for trial_id, (loss, val, test) in trials.items():
        rows.append(
            {
                "trial_id": trial_id,
                "variant": f"v{trial_id}",
                "stop_reason": "completed",
                "best_epoch": 1,
                "best_val_loss": loss,
                "test_acc": float(np.mean(np.argmax(test, 1) == LABELS)),
            }
        )
        checkpoint = root / f"small_cnn_s0_{trial_id}" / "checkpoint_000001"
        checkpoint.mkdir(parents=True)
        np.savez(
            checkpoint / "predictions.npz",
            val_probs=np.asarray(val, float),
            val_labels=LABELS,
            val_ids=np.asarray(val_ids),
            test_probs=np.asarray(test, float),
            test_labels=LABELS,
            test_ids=np.asarray(test_ids),
        )
    pd.DataFrame(rows).to_csv(root / "results.csv", index=False)
    return root


# a: right on the first half (sure), wrong on the second (unsure); b the reverse; c 3 of 4
A = [[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]]
B = [[0.4, 0.6], [0.4, 0.6], [0.1, 0.9], [0.1, 0.9]]
C = [[0.6, 0.4], [0.6, 0.4], [0.4, 0.6], [0.6, 0.4]]
