"""The REST service, started for real on loopback and spoken to with a real HTTP client:
its predictions are predict.py's, and every bad upload gets a 4xx with a one-line JSON
error while the server goes on."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import ROOT, free_port, get, post, wait_for_port

pytestmark = pytest.mark.integration


CLASS_SCORES = [sorted(np.linspace(0.05, 0.95, 40)), [0.2] * 40, [0.99] * 40]


def _png(size=(40, 40), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _solid_png(size) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 120, 40)).save(buffer, "PNG")  # a few hundred bytes
    return buffer.getvalue()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """An export of a small CNN with calibration, served on a free loopback port with small
    limits (so that the limits can be met in a test)."""
    from trainables.deploy.bundle import ExportSpec, write_export
    from trainables.model.factory import create_model
    from trainables.model.record import Preprocess

    base = tmp_path_factory.mktemp("serve")
    import torch

    torch.manual_seed(0)
    spec = ExportSpec(
        create_model("small_cnn", 3, "false").build,
        Preprocess(32, 36, "bilinear", (0.5,) * 3, (0.25,) * 3),
        ["=cell", "b", "c"],
        {"trial_id": "t", "test_acc": 0.5},
        {
            "temperature": 1.7,
            "scores": sorted(np.linspace(0.05, 0.95, 40)),
            "class_scores": CLASS_SCORES,
        },
    )
    write_export(base / "export", spec, spec.build().state_dict())
    port = free_port()
    log = base / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "sweeps" / "serve.py"),
                str(base / "export"),
                "--port",
                str(port),
                "--max-bytes",
                "200000",
                "--max-pixels",
                "250000",
                "--max-request-bytes",
                "1000000",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(server, port, log)
        yield f"http://127.0.0.1:{port}", base
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_predictions_are_predict_pys_calibrated_with_sets(service, tmp_path):
    from sweeps import predict

    url, base = service
    images = tmp_path / "images"
    images.mkdir()
    files = []
    for i in range(3):
        data = _png(seed=i)
        (images / f"{i}.png").write_bytes(data)
        files.append(("images", f"{i}.png", data))
    status, body = post(f"{url}/predict?coverage=0.9", files)
    assert status == 200, body
    got = {p["file"]: p for p in body["predictions"]}
    predict.main([str(base / "export"), str(images), "--out", str(tmp_path / "p.csv")])
    import pandas as pd

    table = pd.read_csv(tmp_path / "p.csv").set_index("path")
    for name, row in table.iterrows():
        served = got[name]["probabilities"]
        assert served["=cell"] == pytest.approx(row["p_=cell"], abs=1e-5)
        assert served["b"] == pytest.approx(row["p_b"], abs=1e-5)
        assert got[name]["class"] == max(served, key=served.get)
        assert got[name]["set"] and got[name]["class"] in got[name]["set"]
    # per class (Mondrian): each class against its own threshold, at 0.9 the 37th smallest
    # of its 40 scores: =cell 0.05 + 36 x 0.9 / 39, b 0.2, c 0.99
    status, body = post(f"{url}/predict?coverage=0.9&per_class=true", files)
    assert status == 200, body
    cut = {"=cell": 0.05 + 36 * 0.9 / 39, "b": 0.2, "c": 0.99}
    for item in body["predictions"]:
        assert item["per_class"] is True
        assert item["set"] == [c for c, p in item["probabilities"].items() if p >= 1 - cut[c]]
    status, model = get(f"{url}/model")
    assert status == 200 and model["calibration"]["temperature"] == 1.7
    assert model["classes"] == ["=cell", "b", "c"] and model["runtime"] == "onnx"


def _gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (90, 120, 40)).save(buffer, "GIF")
    return buffer.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose header says it is ``width`` x ``height`` pixels (CRC fixed up)."""
    import struct
    import zlib

    data = bytearray(_solid_png((8, 8)))
    start = 8 + 8  # signature, then the IHDR chunk's length and type
    data[start : start + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12 : start + 13]))
    data[start + 13 : start + 17] = struct.pack(">I", crc)
    return bytes(data)


BAD = {  # what is sent: (files, expected status, words of the one-line error)
    "not an image": ([("images", "notes.png", b"these are notes")], 415, "not an image"),
    "truncated image": ([("images", "cut.png", _png()[:120])], 400, "cannot be decoded"),
    "empty file": ([("images", "empty.png", b"")], 400, "empty file"),
    "too many bytes": (
        [("images", "big.png", _png((300, 300)) + b"\0" * 200_000)],
        413,
        "over the limit of 200000",
    ),
    "too many pixels": (
        [("images", "wide.png", _solid_png((600, 500)))],
        413,
        "600x500 pixels, over the limit",
    ),
    "missing field": ([("file", "x.png", _png())], 422, "send the images as multipart"),
    # only the documented formats are opened: not GIF (nor EPS, which runs Ghostscript)
    "a GIF": ([("images", "anim.gif", _gif())], 415, "not an image this service reads"),
    "a header of 50000 x 50000 pixels": (
        [("images", "bomb.png", _png_declaring(50000, 50000))],
        413,
        "over the limit of 250000 pixels",
    ),
    # the framework's own refusals speak the service's error format too
    "over 1000 files": ([("images", f"{i}.png", b"x") for i in range(1001)], 400, "bad request"),
    # a file name is only echoed back: over 255 characters it is refused; over the
    # multipart parser's header limit (4 KiB) the parser refuses the part itself
    "a 300-character file name": (
        [("images", "n" * 300 + ".png", _png())],
        400,
        "a file name of 304 characters (nnnnnnnnnnnnnnnnnnnnnnnn...), over the limit of 255",
    ),
    "a 5000-character file name": (
        [("images", "n" * 5000 + ".png", _png())],
        400,
        "bad request: Invalid multipart data",
    ),
    "one bad among good": (
        [("images", "ok.png", _png()), ("images", "bad.jpg", b"\xff\xd8")],
        415,
        "bad.jpg: not an image",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_upload_is_a_4xx_in_one_line_and_the_server_goes_on(service, case):
    url, _ = service
    files, expected, words = BAD[case]
    status, body = post(f"{url}/predict", files)
    assert status == expected, body
    assert set(body) == {"error"} and "\n" not in body["error"] and words in body["error"]
    assert get(f"{url}/health") == (200, {"status": "ok"})


def _raw(url: str, method: str, path: str, headers: dict, body: bytes = b""):
    import http.client
    import json
    from urllib.parse import urlparse

    where = urlparse(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    try:
        connection.putrequest(method, path)
        for key, value in headers.items():
            connection.putheader(key, value)
        connection.endheaders(body or None)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def test_the_framework_s_own_answers_are_the_services_errors(service):
    url, _ = service
    # a body declared over --max-request-bytes is refused before it is sent, let alone read
    status, body = _raw(
        url,
        "POST",
        "/predict",
        {"Content-Type": "multipart/form-data; boundary=b", "Content-Length": str(10**9)},
    )
    assert status == 413 and "over the limit of 1000000 bytes" in body["error"], body
    status, body = _raw(  # malformed multipart
        url,
        "POST",
        "/predict",
        {"Content-Type": "multipart/form-data; boundary=b", "Content-Length": "13"},
        b"--b\r\ngarbage\r",
    )
    assert 400 <= status < 500 and set(body) == {"error"}, (status, body)
    for page in ("/docs", "/redoc", "/openapi.json"):  # not served unless --docs
        status, body = _raw(url, "GET", page, {})
        assert status == 404 and set(body) == {"error"}, (page, status, body)
    assert get(f"{url}/health") == (200, {"status": "ok"})


def test_the_service_listens_on_loopback_unless_told_otherwise():
    from sweeps import serve
    from trainables.core.errors import UserError

    with pytest.raises(UserError, match="not a loopback address"):
        serve.main(["nowhere", "--host", "0.0.0.0"])
    with pytest.raises(UserError, match="shape the Ray Serve deployment: add --ray"):
        serve.main(["nowhere", "--replicas", "2"])
    with pytest.raises(UserError, match="runs on the CPU here; use --runtime torch"):
        serve.main(["nowhere", "--ray", "--gpus-per-replica", "0.5"])
    import time

    started = time.monotonic()  # a dead cluster address: one line in seconds, as run.py
    with pytest.raises(UserError, match="no Ray cluster answers there"):
        serve.main(["nowhere", "--ray", "--address", f"127.0.0.1:{free_port()}"])
    assert time.monotonic() - started < 30


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone since it was listed
        return b""


def test_the_same_app_on_ray_serve_answers_alike_from_two_replicas_on_loopback(service):
    """serve.py --ray: two replicas of the same app behind Ray Serve's proxy, on a local Ray
    instance. Their answers are the plain server's, every socket of the service (Ray's, the
    proxy's, the replicas') listens on 127.0.0.1, and Ctrl-C stops it all."""
    import signal
    import time

    from helpers import descendants, listening

    url, base = service
    files = [("images", f"{i}.png", _png(seed=i)) for i in range(3)]
    status, plain = post(f"{url}/predict?coverage=0.9", files)
    assert status == 200, plain
    port = free_port()
    log = base / "ray-serve.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "sweeps" / "serve.py"),
                str(base / "export"),
                "--ray",
                "--replicas",
                "2",
                "--cpus-per-replica",
                "0.5",
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline, ready = time.monotonic() + 180, False
        while not ready and time.monotonic() < deadline and server.poll() is None:
            try:  # Serve's proxy answers 404 until the app is deployed
                ready = get(f"http://127.0.0.1:{port}/health")[0] == 200
            except (OSError, ValueError):
                time.sleep(1)
        assert ready, log.read_text()[-3000:]
        for _ in range(4):  # requests spread over the replicas; each answers alike
            status, body = post(f"http://127.0.0.1:{port}/predict?coverage=0.9", files)
            assert status == 200, body
            for got, want in zip(body["predictions"], plain["predictions"]):
                assert got["class"] == want["class"] and got["set"] == want["set"]
                assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)
        assert sum(b"ServeReplica" in _cmdline(p) for p in descendants(server.pid)) == 2
        addresses = listening(descendants(server.pid))
        assert f"127.0.0.1:{port}" in addresses
        assert all(a.startswith("127.0.0.1:") for a in addresses), addresses
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    assert server.returncode in (130, 0), log.read_text()[-2000:]


def test_a_slow_upload_does_not_hold_up_the_other_clients(tmp_path, monkeypatch):
    """Uploads are decoded off the event loop: while one request's images take 2 s to
    decode, /health answers at once (decoded on the loop, it waited the 2 s)."""
    import threading
    import time

    import torch
    import uvicorn

    from trainables.deploy import serving
    from trainables.deploy.bundle import ExportSpec, write_export
    from trainables.model.factory import create_model
    from trainables.model.record import Preprocess

    torch.manual_seed(0)
    spec = ExportSpec(
        create_model("small_cnn", 3, "false").build,
        Preprocess(32, 36, "bilinear", (0.5,) * 3, (0.25,) * 3),
        ["a", "b", "c"],
        {"trial_id": "t"},
    )
    write_export(tmp_path / "export", spec, spec.build().state_dict())
    decode = serving.decode_upload

    def slow(*args, **kwargs):
        time.sleep(2.0)
        return decode(*args, **kwargs)

    monkeypatch.setattr(serving, "decode_upload", slow)
    app = serving.create_app(tmp_path / "export", "torch")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        answers = {}
        slow_client = threading.Thread(
            target=lambda: answers.update(
                slow=post(f"{url}/predict", [("images", "a.png", _png())])
            )
        )
        slow_client.start()
        time.sleep(0.5)  # the slow request is being decoded
        started = time.monotonic()
        assert get(f"{url}/health") == (200, {"status": "ok"})
        waited = time.monotonic() - started
        slow_client.join(timeout=30)
        assert answers["slow"][0] == 200, answers
        assert waited < 1.0, waited
    finally:
        server.should_exit = True
        thread.join(timeout=30)
