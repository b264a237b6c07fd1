"""The REST service under a bounded load on loopback, beside the same model called in
process; and ONNX Runtime against eager torch for the exported network.

    python serve.py [--model mobilenet_v2] [--size 96] [--requests 96] [--seconds 40]

Exports a randomly initialised MODEL (speed does not depend on the weights) at SIZE px,
starts ``sweeps/serve.py`` on a free 127.0.0.1 port, and sends one-image requests from 1, 8
and 32 client threads: at most REQUESTS per level and at most SECONDS each, all to
loopback. Prints throughput and p50/p99 latency per level, the in-process time per image
of the same work (decode, preprocess, ONNX Runtime, calibration), the service's overhead
as a ratio, and the runtimes' medians over interleaved rounds at batch 1 and 32.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from _common import ROOT


def _request(url: str, data: bytes) -> float:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename='
            f'"x.png"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
    return time.perf_counter() - started


def load(url: str, data: bytes, clients: int, requests: int, seconds: float):
    """(throughput per second, latencies) of up to ``requests`` requests in ``seconds``."""
    latencies, lock, deadline = [], threading.Lock(), time.monotonic() + seconds
    left = [requests]

    def client():
        while time.monotonic() < deadline:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            took = _request(url, data)
            with lock:
                latencies.append(took)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies) / (time.perf_counter() - started), sorted(latencies)


def quantile(values, q):
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    import numpy as np
    import torch
    from PIL import Image

    from tests.helpers import free_port, wait_for_port
    from trainables.data import decode_image
    from trainables.deploy.bundle import ExportSpec, preprocess, runtime_of, softmax, write_export
    from trainables.model.factory import create_model
    from trainables.model.record import Preprocess
    from trainables.stats.calibration import scaled

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp())
    spec = ExportSpec(
        create_model(args.model, 4, "false").build,
        Preprocess(
            args.size,
            round(args.size / 0.875),
            "bilinear",
            (0.485, 0.456, 0.406),
            (0.229, 0.224, 0.225),
        ),
        ["a", "b", "c", "d"],
        {"trial_id": "benchmark"},
        {"temperature": 1.5},
    )
    write_export(folder / "export", spec, spec.build().state_dict())
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)).save(buffer, "JPEG")
    data = buffer.getvalue()
    (folder / "x.jpg").write_bytes(data)

    # in process: the same work per image, one at a time
    run = runtime_of(folder / "export", "onnx", spec, model_threads=1)
    per_image = []
    for _ in range(args.rounds * 8):
        started = time.perf_counter()
        x = preprocess(decode_image(io.BytesIO(data), spec.load_size)[None], spec)
        scaled(softmax(run(x)), spec.temperature)
        per_image.append(time.perf_counter() - started)
    inproc = statistics.median(per_image)

    port = free_port()
    log = folder / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "sweeps" / "serve.py"),
                str(folder / "export"),
                "--port",
                str(port),
                "--model-threads",
                "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(server, port, log)
        url = f"http://127.0.0.1:{port}/predict"
        _request(url, data)  # warm
        print(
            f"{args.model} at {args.size} px, one 500x375 JPEG per request, "
            f"{args.requests} requests or {args.seconds:g} s per level, 127.0.0.1\n"
        )
        print("| clients | requests | per second | p50 ms | p99 ms | p50 / in-process |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for clients in (1, 8, 32):
            rate, latencies = load(url, data, clients, args.requests, args.seconds)
            p50, p99 = quantile(latencies, 0.5), quantile(latencies, 0.99)
            print(
                f"| {clients} | {len(latencies)} | {rate:.1f} | {p50 * 1e3:.1f} | "
                f"{p99 * 1e3:.1f} | {p50 / inproc:.2f}x |"
            )
        print(
            f"\nin process, the same work per image (median of {len(per_image)}): "
            f"{inproc * 1e3:.1f} ms"
        )
    finally:
        server.terminate()
        server.wait(timeout=30)

    # runtimes, interleaved rounds, one thread
    times = {}
    for batch in (1, 32):
        x = torch.randn(batch, 3, args.size, args.size)
        runs = {
            name: runtime_of(folder / "export", name, spec, model_threads=1)
            for name in ("torch", "onnx")
        }
        for name in runs:
            runs[name](x)  # warm
        for _ in range(args.rounds):
            for name, call in runs.items():
                started = time.perf_counter()
                call(x)
                times.setdefault((name, batch), []).append(time.perf_counter() - started)
    print("\n| batch | eager torch ms | ONNX Runtime ms | torch / ONNX |")
    print("| ---: | ---: | ---: | ---: |")
    for batch in (1, 32):
        t, o = (statistics.median(times[(n, batch)]) for n in ("torch", "onnx"))
        print(f"| {batch} | {t * 1e3:.1f} | {o * 1e3:.1f} | {t / o:.2f}x |")


if __name__ == "__main__":
    main()
