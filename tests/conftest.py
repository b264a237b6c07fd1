"""Shared fixtures: an isolated cache, a prepared data handle, CPU only, and one Ray head
for the command-line tests. Helpers that are not fixtures live in helpers.py."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from helpers import HEAD_ENV, free_port, make_image_folder, wait_for_port
from trainables.core.log import show_lines

# Two pytest workers share two cores, and each sweep's trials take both: an OpenMP thread
# that spins while it waits for work burns the core the other worker's trial needs (the
# slowest fault tests ran 1.4x longer side by side). Waiting threads sleep instead; set
# before torch loads OpenMP here, and inherited by every command and Ray worker started.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The tests that train in this process see the library's lines on stderr, as a command's
# user and a trial's worker do (trainables/core/log.py).
show_lines()


def pytest_configure(config):
    """A suite started in the background of a non-interactive shell (``cmd &``, as a CI job
    may be) inherits SIGINT ignored, and Python keeps it so; the Ctrl-C tests need it
    delivered, in this process, its workers and the commands they start (an exec keeps an
    ignored signal ignored, and resets a handled one to the default)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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
    """Decoded images go to a per-session temp cache, never the user's; so does the key
    that seals a sweep's Ray Tune state (sweeps/driver/seal.py)."""
    cache = tmp_path_factory.getbasetemp() / "visionsweep-cache"
    monkeypatch.setenv("VISIONSWEEP_CACHE", str(cache))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.getbasetemp() / "config"))
    monkeypatch.delenv("VISIONSWEEP_STATE_KEY", raising=False)
    return cache


@pytest.fixture
def offline_hub(monkeypatch):
    """Make any weight download fail at once, as on a machine without network."""
    import torch.hub

    def refuse(url, *args, **kwargs):
        raise OSError(f"download refused in tests: {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


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
    env = dict(
        os.environ,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        PYTHONWARNINGS="ignore",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
    )
    ray = str(Path(sys.executable).parent / "ray")
    with open(logs / "head.log", "w") as log:
        head = subprocess.Popen(
            [
                ray,
                "start",
                "--head",
                "--node-ip-address",
                "127.0.0.1",
                "--port",
                str(port),
                "--num-cpus",
                "2",
                "--num-gpus",
                "0",
                "--include-dashboard",
                "false",
                "--disable-usage-stats",
                "--block",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=logs,
        )
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
