"""What a trained model costs to deploy: its size (parameters, megabytes of weights), its
compute per image (FLOPs at its input size, counted by torch's own ``FlopCounterMode``), and
its measured latency on this machine's CPU.

Size and FLOPs are properties of the architecture: each trial reports them. Latency depends
on the machine and on what else runs, so the report measures it for all compared models in
one run, in interleaved rounds, with the number of threads fixed, and gives the median and
the spread over rounds.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn


def parameter_count(weights: dict[str, torch.Tensor]) -> int:
    """Parameters in a state dict (BatchNorm's running statistics are buffers, not
    parameters, and are not counted; they are in the megabytes)."""
    return sum(
        v.numel()
        for k, v in weights.items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )


def weights_mb(weights: dict[str, torch.Tensor]) -> float:
    """Megabytes (10^6 bytes) of the tensors an exported weights file holds."""
    return sum(v.numel() * v.element_size() for v in weights.values()) / 1e6


@torch.no_grad()
def flops_per_image(net: nn.Module, image_size: int) -> int:
    """Floating-point operations of one image's forward pass in eval mode (a multiply-add
    counts as two), as torch's FlopCounterMode counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    training = net.training
    net.eval()
    try:
        x = torch.zeros(1, 3, image_size, image_size)
        with FlopCounterMode(display=False) as counter:
            net(x)
        return int(counter.get_total_flops())
    finally:
        net.train(training)


def model_costs(net: nn.Module, image_size: int) -> dict[str, float]:
    """The costs every trial reports: params, flops (per image), weights_mb."""
    weights = net.state_dict()
    return {
        "params": parameter_count(weights),
        "flops": flops_per_image(net, image_size),
        "weights_mb": round(weights_mb(weights), 3),
    }


@dataclass(frozen=True)
class Latency:
    batch: int
    median_ms: float  # per batch, median over rounds
    spread: float  # (largest - smallest) / median over rounds: how noisy it was
    rounds: int


def measure_latency(
    models: dict[str, tuple[nn.Module, int]],
    batches=(1, 32),
    rounds: int = 5,
    repeats: int = 5,
    threads: int = 1,
) -> dict[str, dict[int, Latency]]:
    """Latency of each ``name -> (network, image size)`` on the CPU, in milliseconds per
    batch. Every round times every model once at every batch size (the models take turns,
    so a burst of other load touches them alike); a round's time is the median of
    ``repeats`` runs after one warm-up. ``threads`` is fixed for the whole measurement."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    samples = {name: {b: [] for b in batches} for name in models}
    try:
        with torch.inference_mode():
            for net, size in models.values():
                net.eval()(torch.zeros(1, 3, size, size))  # first call: allocations
            for _ in range(rounds):
                for name, (net, size) in models.items():
                    for batch in batches:
                        x = torch.zeros(batch, 3, size, size)
                        net(x)
                        runs = []
                        for _ in range(repeats):
                            started = time.perf_counter()
                            net(x)
                            runs.append(time.perf_counter() - started)
                        samples[name][batch].append(statistics.median(runs) * 1000)
    finally:
        torch.set_num_threads(previous)
    out = {}
    for name, by_batch in samples.items():
        out[name] = {}
        for batch, values in by_batch.items():
            middle = statistics.median(values)
            out[name][batch] = Latency(
                batch, middle, (max(values) - min(values)) / middle, len(values)
            )
    return out


def pareto_front(cost: list[float], score: list[float]) -> list[bool]:
    """Which points no other point beats: none has a lower-or-equal cost with a higher score,
    or a lower cost with an equal-or-higher score."""
    front = []
    for i, (c, s) in enumerate(zip(cost, score)):
        dominated = any(
            (oc <= c and os > s) or (oc < c and os >= s)
            for j, (oc, os) in enumerate(zip(cost, score))
            if j != i
        )
        front.append(not dominated)
    return front
