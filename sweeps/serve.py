"""Serve an exported model over HTTP (FastAPI and uvicorn), on this machine's loopback.

    python sweeps/serve.py EXPORT_DIR [--host 127.0.0.1] [--port 8000] [--runtime onnx]
                           [--max-bytes N] [--max-pixels N] [--batch 32] [--allow-remote]
                           [--ray [--replicas N] [--cpus-per-replica F]
                            [--gpus-per-replica F] [--address ADDR]]

    curl -F images=@leaf.jpg 'http://127.0.0.1:8000/predict?coverage=0.9'

Routes: POST /predict (multipart files under ``images``; ?coverage= adds prediction sets),
GET /health, GET /model. Concurrent requests are batched; bad uploads get a 4xx with a
one-line JSON error and the server goes on (trainables/deploy/serving.py).

With ``--ray`` the same app (``serving.create_app``, built on each replica) runs on Ray
Serve: ``--replicas`` copies behind Serve's HTTP proxy, each with its CPUs and a share of a
GPU (``--gpus-per-replica 0.5``: two replicas to a GPU; the torch runtime then runs on it),
on a local Ray instance or the cluster at ``--address``. EXPORT_DIR must be readable at the
same path on every node that holds a replica (a shared disk).
"""

from __future__ import annotations

import argparse
import sys
import time

from sweeps import cli
from sweeps.driver.cluster import is_loopback, stop_ray
from trainables.core.errors import UserError
from trainables.deploy.bundle import RUNTIMES, load_export


def get_args_parser() -> cli.Parser:
    from trainables.deploy import serving

    parser = cli.parser(__doc__, "python sweeps/serve.py")
    parser.add_argument("export", metavar="EXPORT_DIR")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=cli.number(int, low=1, high=65535), default=8000)
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="onnx",
        help="onnx (default): ONNX Runtime; export: model.pt2; torch",
    )
    parser.add_argument("--max-bytes", type=cli.number(int, low=1), default=serving.MAX_BYTES)
    parser.add_argument("--max-pixels", type=cli.number(int, low=1), default=serving.MAX_PIXELS)
    parser.add_argument(
        "--max-request-bytes",
        type=cli.number(int, low=1),
        default=serving.MAX_REQUEST_BYTES,
        help="a whole request's body; refused with a 413 before it is read past this",
    )
    parser.add_argument(
        "--docs", action="store_true", help="also serve the OpenAPI pages /docs and /redoc"
    )
    parser.add_argument(
        "--batch",
        type=cli.number(int, low=1),
        default=serving.BATCH,
        help="images per model call, gathered from concurrent requests",
    )
    parser.add_argument(
        "--model-threads",
        type=cli.number(int, low=1),
        help="compute threads of the model (default: the runtime's own)",
    )
    parser.add_argument(  # its name before the trials' and the report's threads were told apart
        "--threads", type=cli.number(int, low=1), dest="model_threads", help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--allow-remote", action="store_true", help="let --host be an address other machines reach"
    )
    parser.add_argument(
        "--ray", action="store_true", help="run the app on Ray Serve, in --replicas copies"
    )
    parser.add_argument("--replicas", type=cli.number(int, low=1), default=1)
    parser.add_argument("--cpus-per-replica", type=cli.number(float, above=0), default=1.0)
    parser.add_argument(
        "--gpus-per-replica",
        type=cli.number(float, low=0, high=1),
        default=0.0,
        help="a share of a GPU per replica (fractions pack "
        "several replicas on one GPU; needs --runtime torch)",
    )
    parser.add_argument(
        "--address", help="with --ray: the Ray cluster to serve on (default: a local Ray instance)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    from trainables.deploy import serving

    args = get_args_parser().parse_args(argv)
    if not is_loopback(args.host) and not args.allow_remote:
        raise UserError(
            f"--host {args.host}: not a loopback address; the service listens on "
            "127.0.0.1 unless --allow-remote says otherwise"
        )
    ray_only = [
        flag
        for flag, given in (
            ("--replicas", args.replicas != 1),
            ("--cpus-per-replica", args.cpus_per_replica != 1.0),
            ("--gpus-per-replica", bool(args.gpus_per_replica)),
            ("--address", args.address is not None),
        )
        if given
    ]
    if ray_only and not args.ray:
        raise UserError(f"{', '.join(ray_only)} shape the Ray Serve deployment: add --ray")
    if args.gpus_per_replica and args.runtime != "torch":
        raise UserError(
            f"--gpus-per-replica: the {args.runtime} runtime runs on the CPU "
            "here; use --runtime torch to run on the GPU"
        )
    limits = serving.Limits(
        args.max_bytes, args.max_pixels, max_request_bytes=args.max_request_bytes
    )
    if args.ray:
        from sweeps.driver.cluster import check_reachable

        check_reachable(args.address)  # a dead address in seconds, not Ray's minutes
        load_export(args.export)  # a bad folder is one line here, not on each replica
        return _serve_on_ray(args, limits)
    if args.model_threads:
        import torch

        torch.set_num_threads(args.model_threads)
    app = serving.create_app(
        args.export, args.runtime, limits, args.batch, args.model_threads, docs=args.docs
    )
    import uvicorn

    print(
        f"serving {args.export} ({args.runtime}) on http://{args.host}:{args.port}",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _serve_on_ray(args, limits) -> int:
    """The same app on Ray Serve: each replica builds it (serving.create_app), so the model
    is loaded where it runs and there is one code path for it."""
    try:
        from ray import serve
    except ImportError:
        raise UserError(
            "--ray needs Ray Serve: pip install 'ray[serve]==2.60.0' (the project's 'serve' extra)"
        ) from None

    from sweeps.driver.cluster import start_ray
    from trainables.core import ray_internals
    from trainables.deploy import serving

    export, runtime, batch = args.export, args.runtime, args.batch
    model_threads = args.model_threads
    docs = args.docs
    device = "cuda" if args.gpus_per_replica else "cpu"

    # every server on 127.0.0.1, the replicas' own too (a cluster run listens where the
    # cluster says)
    local = not args.address or is_loopback(args.address.rsplit(":", 1)[0])

    def build():  # on each replica, as it starts (before its own servers do)
        if local:
            ray_internals.serve_grpc_on_loopback()
        return serving.create_app(export, runtime, limits, batch, model_threads, device, docs)

    class Service:
        """A replica of the service (its routes are the app's)."""

    deployment = serve.deployment(
        serve.ingress(build)(Service),
        name="visionsweep",
        num_replicas=args.replicas,
        ray_actor_options={"num_cpus": args.cpus_per_replica, "num_gpus": args.gpus_per_replica},
    )
    start_ray(args.address)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(deployment.bind(), name="visionsweep", route_prefix="/")
    print(
        f"serving {export} ({runtime}) on Ray Serve, {args.replicas} replica(s), on "
        f"http://{args.host}:{args.port}",
        file=sys.stderr,
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
        raise


def cli_main() -> None:
    cli.run(main, cleanup=stop_ray)


if __name__ == "__main__":
    cli.as_process(cli_main)
