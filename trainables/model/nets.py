"""The networks every trial trains: ``Net``, whose forward always returns ``(logits,
aux_logits)`` so the loop never branches on model family; the classifier head's shape;
and the small from-scratch CNN."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


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
    """Classifier head shape: dropout before it, and an optional hidden layer."""

    dropout: float = 0.0
    hidden: int = 0

    def build(self, in_features: int, num_classes: int) -> nn.Module:
        if not self.dropout and not self.hidden:
            return nn.Linear(in_features, num_classes)
        layers = [nn.Dropout(self.dropout)] if self.dropout else []
        if self.hidden:
            layers += [nn.Linear(in_features, self.hidden), nn.ReLU(inplace=True)]
            if self.dropout:
                layers.append(nn.Dropout(self.dropout))
            in_features = self.hidden
        return nn.Sequential(*layers, nn.Linear(in_features, num_classes))


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
