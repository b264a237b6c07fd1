"""The networks every trial trains: ``Net``, whose forward always returns ``(logits,
aux_logits)`` so the loop never branches on model family; the classifier head's shape;
what the head reads (``taps``: the network's own pooled output, or pooled maps of every
stage); and this project's own networks (``NETS``: the small from-scratch CNN), which
the ``custom`` adapter builds by their model name."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainables.core.config import FIXED_CHOICES
from trainables.core.registry import Registry

# what the classifier head reads: "last", the network's own pooled output; "stages", the
# mean- and max-pooled maps at the end of every stage of its trunk as well (``Tapped``);
# "pyramid", those of the image and of the image at half its size, joined; "expanded" and
# "expanded_pyramid", the same read inside each stage's last block where it is an
# inverted residual: its expanded map, before the block projects it back to few channels
TAPS = FIXED_CHOICES["taps"]
# the sizes the trunk reads its input at, as divisors of the image's side, per taps value
SCALES = {"stages": (1,), "pyramid": (1, 2)}
# the taps values that read an inverted residual block's expanded map, each with the one
# it reads like elsewhere (its sizes, and the value for a model without such blocks)
EXPANDED = {"expanded": "stages", "expanded_pyramid": "pyramid"}
SCALES.update({taps: SCALES[like] for taps, like in EXPANDED.items()})


def expands(block: nn.Module) -> bool:
    """Whether ``block`` is an inverted residual (torchvision's MobileNetV2 block): a
    sequence ending in its linear projection (a 1 x 1 convolution and its batch norm),
    whose input, the expanded map after the depthwise convolution's ReLU6, ``Tapped``
    reads with ``expanded=True``."""
    from torchvision.models.mobilenetv2 import InvertedResidual

    return isinstance(block, InvertedResidual)


def expanded_forward(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An inverted residual block's output and its expanded map: the block's own forward
    (torchvision's ``x + conv(x)`` where it has a shortcut, else ``conv(x)``), cut before
    its projection. Every layer is called as the block's own, so torch.fx traces it."""
    layers = list(block.conv)
    hidden = x
    for layer in layers[:-2]:
        hidden = layer(hidden)
    out = hidden
    for layer in layers[-2:]:
        out = layer(out)
    return (x + out if block.use_res_connect else out), hidden


class Net(nn.Module):
    """A classifier whose forward always returns ``(logits, [aux_logits, ...])``."""

    def __init__(self, body: nn.Module, head_prefixes: tuple[str, ...]):
        super().__init__()
        self.body = body
        self.head_prefixes = tuple(f"body.{p}" for p in head_prefixes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = self.body(x)
        if isinstance(out, tuple):  # GoogLeNet in training mode: (logits, aux2, aux1)
            return out[0], [aux for aux in out[1:] if aux is not None]
        return out, []

    def is_head(self, name: str) -> bool:
        """Whether parameter/module ``name`` belongs to a classifier head."""
        return any(name == p or name.startswith(p + ".") for p in self.head_prefixes)


@dataclass(frozen=True)
class HeadSpec:
    """Classifier head shape: dropout before it, and an optional hidden layer;
    ``standardize``: its input standardised first (``Standardize``), for features of
    several depths whose scales differ by orders of magnitude."""

    dropout: float = 0.0
    hidden: int = 0
    standardize: bool = False

    def build(self, in_features: int, num_classes: int) -> nn.Module:
        if not self.dropout and not self.hidden and not self.standardize:
            return nn.Linear(in_features, num_classes)
        layers: list[nn.Module] = [Standardize(in_features)] if self.standardize else []
        layers += [nn.Dropout(self.dropout)] if self.dropout else []
        if self.hidden:
            layers += [nn.Linear(in_features, self.hidden), nn.ReLU(inplace=True)]
            if self.dropout:
                layers.append(nn.Dropout(self.dropout))
            in_features = self.hidden
        return nn.Sequential(*layers, nn.Linear(in_features, num_classes))


class Standardize(nn.Module):
    """Each input feature shifted and scaled to mean 0 and variance 1 over the training
    data: while training by the batch's own statistics, which it also accumulates (torch's
    batch norm: a cumulative average over the first ``1 / MOMENTUM`` batches, a moving
    one with ``MOMENTUM`` after them, so a full-batch fit's statistics are exactly its
    data's); in evaluation, and in lp_ft's fine-tuning after its probe, by the accumulated
    ones. No parameters, so an L2 penalty on the head's weights acts on
    standardised features (a linear probe is then scikit-learn's scaled logistic
    regression). Not a ``_BatchNorm`` subclass, so ``batchnorm=eval`` (which freezes the
    backbone's) leaves it learning."""

    MOMENTUM = 0.1  # BatchNorm's default
    fx_leaf = True  # its forward branches on its mode: torch.fx keeps it whole (model/cut.py)

    def __init__(self, features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))
        self.register_buffer("batches", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 0.0
        if self.training:
            self.batches.add_(1)
            factor = max(1.0 / float(self.batches), self.MOMENTUM)
        return F.batch_norm(
            x, self.running_mean, self.running_var, None, None, self.training, factor, self.eps
        )


class Tapped(nn.Sequential):
    """A trunk (a network's ``nn.Sequential`` of blocks, whose output the network pools
    and classifies) that outputs, instead of its last map, the mean- and max-pooled maps of
    the blocks that end its stages (``stage_ends``), joined into one vector of ``width``
    features: shaped N x D x 1 x 1 where the trunk's output was a map (the network's own
    pooling then leaves it as it is), N x D where it was a vector. With ``scales`` (1, 2)
    the trunk also reads its input averaged over 2 x 2 pixels (the image at half its size:
    fine detail at one size, coarser context at the other), and the vectors of both are
    joined, the full size's first. With ``expanded``, a tapped block that is an inverted
    residual (``expands``) is read at its expanded map instead of its output (on
    MobileNetV2 six times as many channels, after a ReLU6, where its output is a linear
    projection). It holds the trunk's own blocks under their own names, so the weights'
    keys do not change."""

    def __init__(
        self, trunk: nn.Sequential, scales: tuple[int, ...] = (1,), expanded: bool = False
    ):
        super().__init__(*trunk)
        self.scales = tuple(scales)
        self.taps, width, self.as_map, self.maps = stage_ends(self)
        # the tapped blocks read at their expanded map, and the width that adds
        self.inner = frozenset(i for i in self.taps if expanded and expands(self[i]))
        width += sum(
            2 * (self[i].conv[-2].in_channels - self[i].conv[-2].out_channels) for i in self.inner
        )
        self.width = width * len(self.scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # every size goes through a block before any goes through the next, so the frozen
        # first blocks of a trial end at one point of the graph for all sizes (model/cut.py)
        ys = [F.avg_pool2d(x, scale) if scale > 1 else x for scale in self.scales]
        pooled: list[list[torch.Tensor]] = [[] for _ in ys]
        for i, block in enumerate(self):
            if i in self.inner:  # the block's outputs, and its expanded maps to read
                ys, reads = (list(z) for z in zip(*(expanded_forward(block, y) for y in ys)))
            else:
                ys = reads = [block(y) for y in ys]
            if i in self.taps:  # which taps are maps is known from the shapes, so the
                # forward has no branch on a tensor (torch.fx traces it: model/cut.py)
                for r, into in zip(reads, pooled):
                    into += [r.mean((2, 3)), r.amax((2, 3))] if i in self.maps else [r.flatten(1)]
        out = torch.cat([p for into in pooled for p in into], 1)
        return out[:, :, None, None] if self.as_map else out


@contextlib.contextmanager
def in_mode(module: nn.Module, training: bool) -> Iterator[nn.Module]:
    """``module`` in training (or eval) mode inside the block; each of its submodules' own
    mode (a strategy's frozen blocks in eval mode) is put back however the block ends."""
    was = {m: m.training for m in module.modules()}
    module.train(training)
    try:
        yield module
    finally:
        for m, training_was in was.items():
            m.training = training_was


def evaluating(module: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """``module`` in eval mode inside the block (no batch statistics move, no dropout),
    each submodule's own mode put back after it (``in_mode``)."""
    return in_mode(module, False)


def stage_ends(
    trunk: nn.Sequential, size: int = 64
) -> tuple[tuple[int, ...], int, bool, frozenset[int]]:
    """The blocks of ``trunk`` that end a stage: the last one, and each whose output's
    channels differ from the next block's where its maps are at most a quarter of the
    input's size across (the first, near full-resolution maps carry little; on MobileNetV2
    these are the 7 taps of benchmarks/probe_layers.py). Found from the output shapes of one
    pass of a ``size`` px image, in eval mode, on the trunk's own device (the meta device
    included). Returns the taps, the width of the tapped vector, whether the trunk's
    output is a map, and which taps output maps (the others, vectors)."""
    parameter = next(trunk.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    shapes = []
    with evaluating(trunk), torch.no_grad():
        x = torch.zeros(1, 3, size, size, device=device)
        for block in trunk:
            x = block(x)
            shapes.append(tuple(x.shape))
    last = len(shapes) - 1
    taps = tuple(
        i
        for i, shape in enumerate(shapes)
        if i == last
        or (shape[1] != shapes[i + 1][1] and (len(shape) != 4 or max(shape[2:]) * 4 <= size))
    )
    width = sum(2 * shapes[i][1] if len(shapes[i]) == 4 else shapes[i][1] for i in taps)
    maps = frozenset(i for i in taps if len(shapes[i]) == 4)
    return taps, width, len(shapes[last]) == 4, maps


# this project's own networks, by model name (each also a ModelSpec of family "custom" in
# zoo.py): a class taking no arguments, whose classifier the factory replaces
NETS: Registry[type[nn.Module]] = Registry("custom network", checked=False)


@NETS.register("small_cnn")
class SmallCNN(nn.Module):
    """Four conv blocks and a linear head: a from-scratch baseline that trains fast on CPU."""

    def __init__(self, num_classes: int = 1000, width: int = 32, head: HeadSpec = HeadSpec()):
        super().__init__()
        layers, channels = [], 3
        for i in range(4):
            out = width * 2**i
            layers += [
                nn.Conv2d(channels, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = head.build(channels, num_classes)

    def forward(self, x):
        return self.head(self.features(x))
