"""A network cut in two where its frozen blocks end: the prefix, which a trial never trains
(its outputs can be computed once and cached, trainables/trial/frozen.py), and the suffix,
which trains on them.

The cut is found on the network's graph (``torch.fx``), not named per model: the latest
point at which every operation so far belongs to the frozen blocks, where what the rest of
the network reads from before it (usually one map; with an every-stage head, also the
earlier stages' pooled maps) are per-image tensors, and where the two halves are checked
to give the network's own output on an example. A network whose graph cannot be traced,
or whose traced graph depends on training or evaluation mode (GoogLeNet's auxiliary
heads, a stochastic depth traced into a function), is not cut: its trials run the whole
network on every batch, as without a cache.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import fx, nn

from trainables.model.nets import in_mode

log = logging.getLogger(__name__)


@dataclass
class Cut:
    """``prefix`` computes, from the body's input, the values that ``suffix`` reads (a
    tuple: the map where the frozen blocks end, and any earlier value still read after it,
    such as the pooled maps of earlier stages that an every-stage head reads); ``at`` names
    the last of them (the module that outputs it, or the graph's name for it), ``index``
    is its place in the traced graph. Both halves share ``body``'s modules: training the
    suffix trains the network."""

    at: str
    index: int
    prefix: fx.GraphModule
    suffix: fx.GraphModule


class _Tracer(fx.Tracer):
    """fx's tracer, which also keeps whole a module marked ``fx_leaf`` (one whose forward
    branches on its own training mode, as ``nets.Standardize`` does): it is called, not
    traced into, so the graph does not fix its mode."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return getattr(m, "fx_leaf", False) or super().is_leaf_module(m, qualname)


def _trace(body: nn.Module, training: bool = True) -> fx.GraphModule:
    with in_mode(body, training):
        return fx.GraphModule(body, _Tracer().trace(body))


# the latest few cut points tried (on an example) before a network is left uncut
TRIES = 8


def split_body(body: nn.Module, frozen: set[str], example: torch.Tensor) -> Cut | None:
    """``body`` cut after its leading frozen part: ``frozen`` holds the names of its frozen
    parameters (as ``body.named_parameters`` gives them). The latest cut point whose values
    are per-image tensors and whose two halves give ``body``'s output on ``example`` (a
    batch of its inputs) is taken. None where no cut exists (nothing frozen comes first, or
    the graph is not one that can be cut, see the module's text)."""
    graph = _graph(body, frozen)
    if graph is None:
        return None
    for index in _candidates(graph, frozen)[:TRIES]:
        cut = _cut(body, graph, index)
        if _holds(body, cut, example):
            return cut
    return None


def cut_at(body: nn.Module, index: int) -> Cut:
    """``body`` cut where a ``Cut`` of a network of the same architecture was (``index``):
    the same cut of a copy (the weights' moving average)."""
    return _cut(body, _trace(body), index)


def _graph(body: nn.Module, frozen: set[str]) -> fx.GraphModule | None:
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
    if sum(n.op == "placeholder" for n in graph.graph.nodes) != 1:
        return None
    return graph


def _candidates(graph: fx.GraphModule, frozen: set[str]) -> list[int]:
    """The graph's cut points inside its leading frozen part, the latest first: after
    node i, where nothing up to i trains and what is read after i was computed from the
    input (not the input itself, nor a parameter or constant)."""
    nodes = list(graph.graph.nodes)
    last_read = _last_read(nodes)
    parameters = dict(graph.named_parameters())

    def is_frozen(node: fx.Node) -> bool:
        if node.op == "call_module":
            module = graph.get_submodule(node.target)
            return all(f"{node.target}.{n}" in frozen for n, _ in module.named_parameters())
        if node.op == "get_attr":  # a buffer or constant, or a parameter of the frozen part
            return node.target not in parameters or node.target in frozen
        return node.op in ("call_function", "call_method")

    found = []
    for i, node in enumerate(nodes):
        if node.op == "placeholder":
            continue
        if node.op == "output" or not is_frozen(node):
            break
        live = _live(nodes, last_read, i)
        if live and all(n.op in ("call_module", "call_function", "call_method") for n in live):
            found.append(i)
    return found[::-1]


def _last_read(nodes: list[fx.Node]) -> dict[fx.Node, int]:
    """Each node's last reader's place in ``nodes`` (-1: none reads it)."""
    position = {node: i for i, node in enumerate(nodes)}
    return {node: max((position[u] for u in node.users), default=-1) for node in nodes}


def _live(nodes: list[fx.Node], last_read: dict[fx.Node, int], index: int) -> list[fx.Node]:
    """The values computed up to node ``index`` that a later node reads: what crosses a cut
    there."""
    return [n for n in nodes[: index + 1] if last_read[n] > index]


def _cut(body: nn.Module, graph: fx.GraphModule, index: int) -> Cut:
    nodes = list(graph.graph.nodes)
    live = _live(nodes, _last_read(nodes), index)
    head = fx.Graph()
    copied: dict[fx.Node, fx.Node] = {}
    for node in nodes[: index + 1]:
        copied[node] = head.node_copy(node, lambda n: copied[n])
    head.output(tuple(copied[n] for n in live))
    tail = fx.Graph()
    copied = {n: tail.placeholder(f"frozen_{k}") for k, n in enumerate(live)}
    for node in nodes[index + 1 :]:
        copied[node] = tail.node_copy(node, lambda n: copied[n])
    at = nodes[index]
    name = str(at.target) if at.op == "call_module" else at.name
    return Cut(name, index, fx.GraphModule(body, head), fx.GraphModule(body, tail))


def _holds(body: nn.Module, cut: Cut, x: torch.Tensor, tolerance: float = 1e-5) -> bool:
    """Whether ``cut``'s values are per-image tensors (one row per input image) and
    ``cut.suffix(*cut.prefix(x))`` is ``body(x)``, in evaluation mode: the two halves are
    the whole network."""
    with in_mode(body, False), torch.no_grad():
        values = cut.prefix(x)
        if not all(isinstance(v, torch.Tensor) and v.shape[:1] == x.shape[:1] for v in values):
            return False
        whole, halves = body(x), cut.suffix(*values)
    if not isinstance(whole, torch.Tensor) or not isinstance(halves, torch.Tensor):
        return False
    scale = max(1.0, float(whole.abs().max()))
    return whole.shape == halves.shape and float((whole - halves).abs().max()) <= tolerance * scale
