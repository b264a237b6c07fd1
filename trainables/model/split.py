"""A network cut in two where its frozen blocks end: the prefix, which a trial never trains
(its outputs can be computed once and cached, trainables/trial/frozen.py), and the suffix,
which trains on them.

The cut is found on the network's graph (``torch.fx``), not named per model: the latest
point at which every operation so far belongs to the frozen blocks and a single value is
all that the rest of the network reads. A network whose graph cannot be traced, or whose
traced graph depends on training or evaluation mode (GoogLeNet's auxiliary heads, a
stochastic depth traced into a function), is not cut: its trials run the whole network on
every batch, as without a cache.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import fx, nn

log = logging.getLogger(__name__)


@dataclass
class Cut:
    """``prefix`` computes, from the body's input, the one value that ``suffix`` reads;
    ``at`` names that value (the module that outputs it, or the graph's name for it). Both
    share ``body``'s modules: training the suffix trains the network."""

    at: str
    prefix: fx.GraphModule
    suffix: fx.GraphModule


@contextlib.contextmanager
def _in_mode(body: nn.Module, training: bool) -> Iterator[None]:
    """``body`` in training (or evaluation) mode inside the block; each submodule's own
    mode (a strategy's frozen blocks in eval mode) is put back however it ends."""
    was = {m: m.training for m in body.modules()}
    body.train(training)
    try:
        yield
    finally:
        for m, training_was in was.items():
            m.training = training_was


def _trace(body: nn.Module, training: bool) -> fx.GraphModule:
    with _in_mode(body, training):
        return fx.symbolic_trace(body)


def split_body(body: nn.Module, frozen: set[str]) -> Cut | None:
    """``body`` cut after its leading frozen part: ``frozen`` holds the names of its frozen
    parameters (as ``body.named_parameters`` gives them). None where no cut exists (nothing
    frozen comes first, or the graph is not one that can be cut, see the module's text)."""
    if not frozen:
        return None
    try:
        graph = _trace(body, True)
        if graph.code != _trace(body, False).code:
            log.debug("not cut: the traced graph depends on training mode")
            return None
    except Exception as exc:  # noqa: BLE001  (fx refuses many models, each its own way)
        log.debug(f"not cut: the graph could not be traced ({type(exc).__name__}: {exc})")
        return None
    nodes = list(graph.graph.nodes)
    position = {node: i for i, node in enumerate(nodes)}
    last_read = {node: max((position[u] for u in node.users), default=-1) for node in nodes}

    parameters = dict(graph.named_parameters())

    def is_frozen(node: fx.Node) -> bool:
        if node.op == "call_module":
            module = graph.get_submodule(node.target)
            return all(f"{node.target}.{n}" in frozen for n, _ in module.named_parameters())
        if node.op == "get_attr":  # a buffer or constant, or a parameter of the frozen part
            return node.target not in parameters or node.target in frozen
        return node.op in ("call_function", "call_method")

    cut = None
    for i, node in enumerate(nodes):
        if node.op == "placeholder":
            continue
        if node.op == "output" or not is_frozen(node):
            break
        live = [n for n in nodes[: i + 1] if last_read[n] > i]
        if live == [node] and node.op != "get_attr":
            cut = i
    if cut is None:
        return None
    at = nodes[cut]
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        return None

    head = fx.Graph()
    copied: dict[fx.Node, fx.Node] = {}
    for node in nodes[: cut + 1]:
        copied[node] = head.node_copy(node, lambda n: copied[n])
    head.output(copied[at])

    tail = fx.Graph()
    copied = {at: tail.placeholder("frozen")}
    for node in nodes[cut + 1 :]:
        copied[node] = tail.node_copy(node, lambda n: copied[n])
    name = str(at.target) if at.op == "call_module" else at.name
    return Cut(name, fx.GraphModule(body, head), fx.GraphModule(body, tail))


def same_output(body: nn.Module, cut: Cut, x: torch.Tensor, tolerance: float = 1e-5) -> bool:
    """Whether ``cut.suffix(cut.prefix(x))`` is ``body(x)`` (in evaluation mode): the check
    that the two halves are the whole network."""
    with _in_mode(body, False), torch.no_grad():
        whole, halves = body(x), cut.suffix(cut.prefix(x))
    if isinstance(whole, tuple) or isinstance(halves, tuple):
        return False
    scale = max(1.0, float(whole.abs().max()))
    return whole.shape == halves.shape and float((whole - halves).abs().max()) <= tolerance * scale
