"""Serve an exported model over HTTP (FastAPI and uvicorn), on this machine's loopback.

    python sweeps/serve.py EXPORT_DIR [--host 127.0.0.1] [--port 8000] [--runtime onnx]
                           [--max-bytes N] [--max-pixels N] [--batch 32] [--allow-remote]

    curl -F images=@leaf.jpg 'http://127.0.0.1:8000/predict?coverage=0.9'

Routes: POST /predict (multipart files under ``images``; ?coverage= adds prediction sets),
GET /health, GET /model. Concurrent requests are batched; bad uploads get a 4xx with a
one-line JSON error and the server goes on (trainables/serving.py).
"""
from __future__ import annotations

import sys

from sweeps import cli
from sweeps.driver.cluster import is_loopback
from trainables.deploy import RUNTIMES
from trainables.errors import UserError


def main(argv: list[str] | None = None) -> int:
    from trainables import serving

    parser = cli.parser(__doc__, "python sweeps/serve.py")
    parser.add_argument("export", metavar="EXPORT_DIR")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=cli.number(int, low=1, high=65535), default=8000)
    parser.add_argument("--runtime", choices=RUNTIMES, default="onnx",
                        help="onnx (default): ONNX Runtime; export: model.pt2; torch")
    parser.add_argument("--max-bytes", type=cli.number(int, low=1), default=serving.MAX_BYTES)
    parser.add_argument("--max-pixels", type=cli.number(int, low=1),
                        default=serving.MAX_PIXELS)
    parser.add_argument("--batch", type=cli.number(int, low=1), default=serving.BATCH,
                        help="images per model call, gathered from concurrent requests")
    parser.add_argument("--threads", type=cli.number(int, low=1),
                        help="compute threads of the model (default: the runtime's own)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="let --host be an address other machines reach")
    args = parser.parse_args(argv)
    if not is_loopback(args.host) and not args.allow_remote:
        raise UserError(f"--host {args.host}: not a loopback address; the service listens on "
                        "127.0.0.1 unless --allow-remote says otherwise")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    app = serving.create_app(args.export, args.runtime,
                             serving.Limits(args.max_bytes, args.max_pixels), args.batch,
                             args.threads)
    import uvicorn

    print(f"serving {args.export} ({args.runtime}) on http://{args.host}:{args.port}",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def cli_main() -> None:
    cli.run(main)


if __name__ == "__main__":
    cli_main()
