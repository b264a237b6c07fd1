"""Shared fixtures: real image files written with Pillow, an isolated cache, CPU only."""
from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
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


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def colour_handle(tmp_path_factory):
    """A prepared data handle over a real image folder: three noisy colours, 40 images each,
    split 8:1:1 and decoded at 37 px (a 32 px model's load size). Shared by the tests that
    fit small trials."""
    from trainables import data as D

    base = tmp_path_factory.mktemp("colours")
    root = make_image_folder(base / "images", per_class=40)
    handle, _ = D.prepare(D.discover(root), 37, base / "cache", progress=False)
    return handle


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch) -> Path:
    """Decoded images go to a per-session temp cache, never the user's."""
    cache = tmp_path_factory.getbasetemp() / "visionsweep-cache"
    monkeypatch.setenv("VISIONSWEEP_CACHE", str(cache))
    return cache


@pytest.fixture
def offline_hub(monkeypatch):
    """Make any weight download fail at once, as on a machine without network."""
    import torch.hub

    def refuse(url, *args, **kwargs):
        raise OSError(f"download refused in tests: {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


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
                raise RuntimeError(log.read_text()[-2000:])
            time.sleep(0.5)


HEAD_ENV: dict[str, str] = {}  # how a driver authenticates to the session's Ray head


@pytest.fixture(scope="session")
def ray_address(tmp_path_factory):
    """One Ray instance for the command-line tests whose trials need nothing from their
    driver's environment: a head started with ``ray start``, as on a cluster, that each
    driver joins with --address (saving Ray's start and stop every sweep). The fault tests
    and the pretrained sweep start Ray of their own, as a user's laptop run does."""
    import secrets
    import subprocess

    logs = tmp_path_factory.mktemp("ray-head")
    port = free_port()
    token = secrets.token_hex(16)
    # a node on loopback only: its servers listen on 127.0.0.1 (as the driver's own local
    # instance does), and the drivers joining it take 127.0.0.1 as their node address too
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
               PYTHONWARNINGS="ignore", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    ray = str(Path(sys.executable).parent / "ray")
    with open(logs / "head.log", "w") as log:
        head = subprocess.Popen([ray, "start", "--head", "--node-ip-address", "127.0.0.1",
                                 "--port", str(port), "--num-cpus", "2",
                                 "--num-gpus", "0", "--include-dashboard", "false",
                                 "--disable-usage-stats", "--block"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=logs)
    wait_for_port(head, port, logs / "head.log")  # the head is up once its GCS port answers
    # the drivers' credentials for the head, given only to the command lines that join it:
    # set in this process, they would reach the Ray instances that in-process tests start
    # and make those demand a token their already-imported driver never sends
    HEAD_ENV.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        HEAD_ENV.clear()
    head.terminate()  # `ray start --block` stops the head's processes when it ends
    head.wait(timeout=60)
    record = Path("/tmp/ray/ray_current_cluster")  # `ray start` recorded it for ray.init()
    if record.exists() and record.read_text().strip().endswith(f":{port}"):
        record.unlink()


def _cli_command(args: list[str]) -> tuple[list[str], dict]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if "--address" in args:
        env.update(HEAD_ENV)
    return [sys.executable, str(ROOT / "sweeps" / "run.py"), *args], env


def run_cli(args: list[str], cwd: Path, timeout: int = 300, own_group: bool = False):
    """Run ``python sweeps/run.py ARGS`` as a user would, in a fresh process (``own_group``:
    in a process group of its own, as a shell starts a job)."""
    import subprocess

    command, env = _cli_command(args)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, start_new_session=own_group)


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
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1]
                                              .split()[1])
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
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, size, 4))
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
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
                 f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                 ).encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def get(url: str) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, json.loads(response.read())
