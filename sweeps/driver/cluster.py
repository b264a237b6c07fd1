"""Ray itself: start or join a cluster, and size each trial's request against its nodes."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

from trainables.core.errors import UserError

CONNECT_TIMEOUT_S = 10.0


def check_reachable(address: str | None, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A UserError within ``timeout`` seconds when nothing answers at HOST:PORT (Ray itself
    would retry for minutes). 'auto' and ray:// addresses are left to Ray."""
    import socket

    if not address or address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(
            f"`address={address}`: write it as HOST:PORT (the head node's GCS "
            "port, 6379 by default), or 'auto'"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(
            f"`address={address}`: no Ray cluster answers there ({reason}, "
            f"waited up to {timeout:g} s); start one with 'ray start --head' or "
            "check the address"
        ) from None


def start_ray(address: str | None, niceness: int = 0):
    """Ray for this command: joined at ``address``, or a local instance whose trial workers
    run at ``niceness`` above this process (Ray's own default, 15, would let any ordinary
    process on the machine take the cores first; a cluster's workers run as it says)."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if not all(_is_terminal(stream) for stream in (sys.stdout, sys.stderr)):
        # a trial worker's lines come prefixed "(train_trial pid=N)": into a file or a
        # pipe without the colour codes Ray wraps around that prefix
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    # Tune's wait for a finished trial's thread, before its worker is handed on, is set in
    # the workers themselves (trainables/trial/trainable.py): a cluster's do not inherit this.
    kwargs = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=True)
    from trainables.core import ray_internals
    from trainables.core.files import writes_into

    setting = "RAY_TMPDIR" if "RAY_TMPDIR" in os.environ else "TMPDIR"
    with (
        writes_into(Path(ray_internals.ray_temp_dir()), "Ray's temporary folder", setting),
        # a local Ray of ours, or a cluster on this machine's loopback (started so), listens
        # on 127.0.0.1 only; clusters on again before another cluster is joined
        ray_internals.clusters_off(not address or _on_loopback(address)),
    ):
        if address:
            ray_internals.note_local_environment(None)
            return _join(address, kwargs)
        # what Tune would give each trial's worker, inherited from here instead (so that a
        # trial gets a worker Ray prestarted)
        os.environ.setdefault("PL_DISABLE_FORK", "1")
        environment = dict(os.environ)
        # "local": always a fresh instance for this run, never a cluster that `ray start`
        # left recorded on this machine (possibly long dead)
        with ray_internals.own_process_group(), ray_internals.quiet_default_token():
            context = ray.init(address="local", _system_config=local_config(niceness), **kwargs)
        ray_internals.note_local_environment(environment)
    # a local instance of ours: it must not outlive this process
    from sweeps.driver import reaper

    reaper.start()
    return context


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced by an object without it, or closed
        return False


def local_config(niceness: int) -> dict:
    """Ray's system settings for a local instance of ours. Ray starts one worker process per
    CPU with the instance, ahead of need, and a trial's actor takes one of them
    (``ray_internals.trials_inherit_environment``: without it, Tune's runtime environment
    for each trial made Ray start a new process instead, and the prestarted ones sat idle;
    benchmarks/README.md, section 3)."""
    return {"worker_niceness": niceness}


def stop_ray() -> None:
    """Shut down the Ray instance of this run here, not in Ray's exit hook, where a second
    Ctrl-C printed a traceback (what a Ctrl-C cuts short, the watchdog in reaper.py ends)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        from trainables.core import ray_internals

        ray_internals.end_local_monitor()  # else a second of Ray's shutdown waits on it
        ray.shutdown()
        ray_internals.note_local_environment(None)


TOKEN_REFUSED = "InvalidAuthToken"  # the GCS's word for a missing or wrong token


def _join(address: str, kwargs: dict):
    """ray.init on a running cluster. Ray's core retries a refused connection for some
    twenty seconds, a warning a second on stderr: held back, and said in one line when
    the cluster refused this driver's token; repeated as they were otherwise."""
    import ray

    held: list[str] = []
    try:
        with _stderr_held(held):
            context = ray.init(address=address, **kwargs)
    except ConnectionError:
        pass  # said below, in one line
    except BaseException:
        sys.stderr.write("".join(f"{line}\n" for line in held))
        raise
    else:
        sys.stderr.write("".join(f"{line}\n" for line in held))
        return context
    if any(TOKEN_REFUSED in line for line in held):
        raise UserError(
            f"`address={address}`: the cluster refused this driver (its "
            "authentication token is missing or wrong); set RAY_AUTH_TOKEN to "
            "the cluster's token (`ray get-auth-token` on its head) and "
            "RAY_AUTH_MODE=token"
        )
    reason = next((line for line in reversed(held) if line.strip()), "no answer")
    raise UserError(
        f"`address={address}`: cannot join the Ray cluster there ({reason.strip()[:160]})"
    )


@contextmanager
def _stderr_held(held: list[str]):
    """What this process writes to its stderr, C++ included, appended to ``held`` instead."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            held.extend(sink.read().decode("utf-8", "replace").splitlines())


def is_loopback(host: str) -> bool:
    """This machine's loopback: localhost, 127.0.0.0/8, ::1."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _on_loopback(address: str) -> bool:
    """A cluster address (HOST:PORT, or a URI) on this machine's loopback."""
    return is_loopback(address.split("://")[-1].rsplit(":", 1)[0])


def local_resources() -> list[dict[str, float]]:
    """The one node a local Ray instance started by this run will have."""
    import torch

    return [{"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}]


AUTOSCALING_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` leaves it on the head


def cluster_nodes() -> list[dict[str, float]] | None:
    """Resources of every node a trial could land on: the live nodes, and the node types the
    autoscaler may add. None when some node type's size is unknown (nothing can be ruled out)."""
    import ray
    import yaml

    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    bootstrap = Path(AUTOSCALING_CONFIG).expanduser()
    if bootstrap.is_file():
        for node_type in (
            yaml.safe_load(bootstrap.read_text()).get("available_node_types", {}).values()
        ):
            if not node_type.get("resources"):
                return None
            nodes.append(node_type["resources"])
    return nodes


def resources(
    cpus_per_trial: float | None,
    gpus_per_trial: float | None,
    nodes: list[dict[str, float]] | None,
    models: tuple[str, ...] = (),
    concurrent: int | None = None,
) -> dict[str, float]:
    """Per-trial resources. A trial runs on one node, so a request that no node can hold
    would wait forever: that is an error now. Without --gpus-per-trial, each trial asks for
    the largest default GPU share among the sweep's models (the model registry's
    ``gpu_share``); without --cpus-per-trial, for its part of a node's CPUs: the node's
    CPUs over the trials that share it (``concurrent`` at most, when fewer can run)."""
    from trainables.model.zoo import model_spec

    gpus = gpus_per_trial
    if gpus is None:
        has_gpu = nodes is not None and any(n.get("GPU", 0) >= 1 for n in nodes)
        share = max((model_spec(m).gpu_share for m in set(models)), default=1.0)
        gpus = share if has_gpu else 0.0
    cpus = cpus_per_trial if cpus_per_trial is not None else node_share(nodes, gpus, concurrent)
    if nodes is not None and not any(
        n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes
    ):
        biggest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)))
        raise UserError(
            f"`cpus_per_trial={cpus:g}` `gpus_per_trial={gpus:g}` "
            f"fits on no node (the largest has {biggest.get('CPU', 0):g} CPUs, "
            f"{biggest.get('GPU', 0):g} GPUs); ask for less"
        )
    return {"cpu": cpus, "gpu": gpus}


def node_share(
    nodes: list[dict[str, float]] | None, gpus: float, concurrent: int | None = None
) -> float:
    """CPUs per trial that let the trials sharing a node use all of it: a node holds as
    many trials as its GPUs allow (as its CPUs, without GPUs), and at most ``concurrent``;
    the smallest share over the nodes that can hold a trial, so a trial fits on any."""
    shares = []
    for node in nodes or []:
        cpus, node_gpus = node.get("CPU", 0), node.get("GPU", 0)
        if cpus < 1 or node_gpus < gpus:
            continue
        trials = node_gpus / gpus if gpus else cpus
        if concurrent:
            trials = min(trials, concurrent)
        shares.append(max(1, int(cpus // max(1.0, trials))))
    return float(min(shares)) if shares else 1.0
