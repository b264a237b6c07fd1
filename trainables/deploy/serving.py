"""The REST service of an exported model (sweeps/serve.py): FastAPI, one model loaded once,
concurrent requests batched.

    POST /predict   multipart, one or several files under ``images``; ?coverage=0.9 adds
                    each image's prediction set (&per_class=true: calibrated per class,
                    Mondrian). JSON: per image its class, probability, every class's
                    probability (calibrated by the trial's temperature) and the set.
    GET  /health    {"status": "ok"}
    GET  /model     the spec: model, classes, preprocessing, the trial's test scores with
                    their intervals, the calibration, the runtime

Bad input never returns a 500 and never stops the server: a file that is not an image, a
truncated image, one over the byte or pixel limit, or a request without images each get a
4xx with a one-line JSON error ``{"error": "..."}``.
"""

import asyncio
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_BYTES = 20 * 2**20  # per uploaded file
MAX_PIXELS = 40_000_000  # per image, width x height, checked before decoding
MAX_FILES = 64  # per request
MAX_NAME = 255  # characters of an uploaded file's name (what file systems allow)
MAX_REQUEST_BYTES = 100 * 2**20  # a whole request body, refused before it is read past this
DECODE_TIMEOUT_S = 30.0  # per request: its images are decoded off the event loop
BATCH = 32  # images per model call
BATCH_WAIT_S = 0.005  # how long the batcher waits for more requests to join a batch


@dataclass(frozen=True)
class Limits:
    max_bytes: int = MAX_BYTES
    max_pixels: int = MAX_PIXELS
    max_files: int = MAX_FILES
    max_request_bytes: int = MAX_REQUEST_BYTES
    decode_timeout_s: float = DECODE_TIMEOUT_S


class BadUpload(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def decode_upload(
    data: bytes, name: str, size: int, interpolation: str, limits: Limits
) -> np.ndarray:
    """An uploaded file as the export decodes it, or BadUpload with the status and why."""
    from PIL import Image, UnidentifiedImageError

    from trainables.data import decode_image
    from trainables.data.decode import IMAGE_FORMATS

    if len(data) > limits.max_bytes:
        raise BadUpload(413, f"{name}: {len(data)} bytes, over the limit of {limits.max_bytes}")
    if not data:
        raise BadUpload(400, f"{name}: empty file")
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as probe:  # the header only
            width, height = probe.size
    except Image.DecompressionBombError:  # a header declaring billions of pixels
        raise BadUpload(413, f"{name}: over the limit of {limits.max_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise BadUpload(
            415, f"{name}: not an image this service reads (JPEG, PNG, BMP, WebP, TIFF)"
        ) from None
    if width * height > limits.max_pixels:
        raise BadUpload(
            413, f"{name}: {width}x{height} pixels, over the limit of {limits.max_pixels}"
        )
    try:
        return decode_image(io.BytesIO(data), size, interpolation)
    except Exception as exc:  # truncated, damaged, an unknown intensity scale
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise BadUpload(400, f"{name}: cannot be decoded ({reason})") from None


class Batcher:
    """Runs the model on batches gathered from concurrent requests."""

    def __init__(self, run, batch: int = BATCH, wait_s: float = BATCH_WAIT_S):
        self.run, self.batch, self.wait_s = run, batch, wait_s
        self.queue: asyncio.Queue | None = None
        self.task = None

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def __call__(self, x) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((x, future))
        return await future

    async def _loop(self) -> None:
        import torch

        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            size = len(items[0][0])
            deadline = loop.time() + self.wait_s
            while size < self.batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
                items.append(item)
                size += len(item[0])
            inputs = torch.cat([x for x, _ in items])
            try:
                logits = await loop.run_in_executor(None, self.run, inputs)
            except Exception as exc:  # the model failed on this batch: every caller hears it
                for _, future in items:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for x, future in items:
                if not future.done():
                    future.set_result(logits[start : start + len(x)])
                start += len(x)


class RequestTooLarge(Exception):
    pass


def too_large(limit: int) -> str:
    return f"request body over the limit of {limit} bytes"


class BodyLimit:
    """ASGI middleware: a request whose body is over ``limit`` bytes gets a 413 as soon as
    that is known (its Content-Length, or the bytes streamed so far), before it is parsed or
    spooled to disk."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise RequestTooLarge
            return message

        await self.app(scope, counted, send)

    async def _refuse(self, send) -> None:
        import json

        body = json.dumps({"error": too_large(self.limit)})
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})


def create_app(
    export_dir: str | Path,
    runtime: str = "onnx",
    limits: Limits = Limits(),
    batch: int = BATCH,
    model_threads: int | None = None,
    device: str = "cpu",
    docs: bool = False,
):
    """The FastAPI app of one export folder (``device``: where the torch runtime runs;
    ``docs``: serve the OpenAPI pages /docs and /redoc, off by default)."""
    from fastapi import FastAPI, File, Query, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    from trainables.deploy.bundle import load_export, preprocess, runtime_of, softmax
    from trainables.stats.calibration import cutoffs, scaled, sets

    spec, net = load_export(export_dir)
    run = runtime_of(Path(export_dir), runtime, spec, net, model_threads, device)
    batcher = Batcher(run, batch)
    scores = spec.calibration.get("scores") or []

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title=f"visionsweep: {spec.source.get('variant', spec.model.model)}",
        lifespan=lifespan,
        **({} if docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}),
    )
    app.add_middleware(BodyLimit, limit=limits.max_request_bytes)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        fields = sorted({str(e.get("loc", ["", "?"])[-1]) for e in exc.errors()})
        return error(
            422,
            f"bad request: missing or invalid field(s) {', '.join(fields)}; "
            "send the images as multipart files under 'images'",
        )

    @app.exception_handler(HTTPException)
    async def refused(request: Request, exc: HTTPException):  # the framework's own 4xx
        # (malformed multipart, too many files or fields, a route that is not there)
        if isinstance(exc.__cause__, RequestTooLarge):  # FastAPI rewraps what the body raised
            return await body_too_large(request, exc.__cause__)
        return error(exc.status_code, f"bad request: {exc.detail}")

    @app.exception_handler(RequestTooLarge)
    async def body_too_large(request: Request, exc: RequestTooLarge):
        return error(413, too_large(limits.max_request_bytes))

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception):  # never a bare 500 page
        return error(500, f"the model failed on this request ({type(exc).__name__})")

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/model")
    async def model():
        return {
            "model": spec.model.model,
            "classes": spec.class_names,
            "runtime": runtime,
            "tta": spec.tta,  # the test-time views every prediction averages
            "preprocess": {
                "image_size": spec.image_size,
                "load_size": spec.load_size,
                "interpolation": spec.interpolation,
            },
            "trial": spec.source,
            "calibration": {
                "temperature": spec.temperature,
                "method": spec.calibration.get("method", "none"),
                "sets": spec.calibration.get("sets", "none"),
                "calibration_images": len(scores),
            },
        }

    @app.post("/predict")
    async def predict(
        images: list[UploadFile] = File(...),
        coverage: float | None = Query(None, gt=0, lt=1),
        per_class: bool = Query(False),
    ):
        if len(images) > limits.max_files:
            return error(
                413, f"{len(images)} files in one request, over the limit of {limits.max_files}"
            )
        for upload in images:  # a name is only echoed back: bounded, not trusted
            name = upload.filename or ""
            if len(name) > MAX_NAME:
                return error(
                    400,
                    f"a file name of {len(name)} characters ({name[:24]}...), over the limit "
                    f"of {MAX_NAME}: shorten it",
                )
        cutoff = None
        if coverage is not None:
            try:
                cutoff = cutoffs(spec.calibration, coverage, per_class)
            except ValueError as exc:
                return error(400, str(exc))
        files = [(await upload.read(limits.max_bytes + 1), upload.filename) for upload in images]

        def decode_all():  # on a worker thread: the event loop keeps serving other clients
            return [
                decode_upload(data, name or "image", spec.load_size, spec.interpolation, limits)
                for data, name in files
            ]

        loop = asyncio.get_running_loop()
        try:
            decoded = await asyncio.wait_for(
                loop.run_in_executor(None, decode_all), limits.decode_timeout_s
            )
        except BadUpload as bad:
            return error(bad.status, str(bad))
        except asyncio.TimeoutError:
            return error(
                408, f"the images took over {limits.decode_timeout_s:g} s to decode; send fewer"
            )
        logits = await batcher(preprocess(np.stack(decoded), spec))
        probs = scaled(softmax(logits), spec.temperature)
        chosen = sets(probs, cutoff) if cutoff is not None else None
        out = []
        for i, upload in enumerate(images):
            best = int(probs[i].argmax())
            item = {
                "file": upload.filename,
                "class": spec.class_names[best],
                "probability": float(probs[i, best]),
                "probabilities": {c: float(p) for c, p in zip(spec.class_names, probs[i])},
            }
            if chosen is not None:
                item["set"] = [c for c, inside in zip(spec.class_names, chosen[i]) if inside]
                item["coverage"] = coverage
                item["per_class"] = per_class
            out.append(item)
        return {"predictions": out}

    return app
