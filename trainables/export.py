"""A trained model as a folder that rebuilds exactly what was trained.

The folder holds ``spec.json`` (architecture, classes, input size, normalisation),
``weights.pt`` (the state dict) and ``model.torchscript.pt`` (the same network traced, for
use without this package). :func:`load_export` rebuilds the architecture from the spec and
loads the weights strictly: a spec that does not match the weights is refused with a message
that names the mismatch, instead of a silently half-loaded model.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainables.errors import UserError
from trainables.models import HeadSpec, create_model

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "weights.pt"
TORCHSCRIPT_FILE = "model.torchscript.pt"
FORMAT = 1


@dataclass(frozen=True)
class ExportSpec:
    model: str
    num_classes: int
    class_names: list[str]
    aux_heads: bool
    head_dropout: float
    head_hidden: int
    image_size: int  # what the network sees: a centre crop of ...
    load_size: int  # ... the image with its shorter side resized to this
    interpolation: str
    mean: list[float]
    std: list[float]
    source: dict  # experiment, trial, variant and scores it came from
    format: int = FORMAT

    def build(self) -> nn.Module:
        return create_model(self.model, self.num_classes, "false", self.aux_heads,
                            head=HeadSpec(self.head_dropout, self.head_hidden),
                            image_size=self.image_size).net


class Logits(nn.Module):
    """The network as deployed: normalised float images in, main-head logits out."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]


def write_export(folder: Path, spec: ExportSpec, weights: dict) -> float:
    """Write the three files; returns the largest difference between the traced network's
    logits and the eager network's on a random input (the trace is checked, not trusted)."""
    net = spec.build()
    check_weights(net, weights, spec)
    net.load_state_dict(weights)
    net.eval()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SPEC_FILE).write_text(json.dumps(asdict(spec), indent=1))
    torch.save(weights, folder / WEIGHTS_FILE)
    example = torch.randn(2, 3, spec.image_size, spec.image_size,
                          generator=torch.Generator().manual_seed(0))
    logits = Logits(net).eval()
    with torch.no_grad(), warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export, but still the format that
        # loads anywhere with a bare `torch.jit.load`; the trace is checked just below
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
        traced = torch.jit.trace(logits, example)
        difference = (traced(example) - logits(example)).abs().max().item()
    traced.save(str(folder / TORCHSCRIPT_FILE))
    return difference


def read_spec(folder: Path) -> ExportSpec:
    path = Path(folder) / SPEC_FILE
    if not path.exists():
        raise UserError(f"{folder}: no {SPEC_FILE}; pass a folder written by sweeps/export.py")
    try:
        raw = json.loads(path.read_text())
        spec = ExportSpec(**raw)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: not a valid export spec ({exc}); re-export the trial") from None
    if spec.format != FORMAT:
        raise UserError(f"{path}: export format {spec.format}, this version reads {FORMAT}; "
                        "re-export the trial")
    if len(spec.class_names) != spec.num_classes:
        raise UserError(f"{path}: {len(spec.class_names)} class names for num_classes "
                        f"{spec.num_classes}; they must agree")
    return spec


def _keys(names, limit: int = 3) -> str:
    names = sorted(names)
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_weights(net: nn.Module, weights: dict, spec: ExportSpec) -> None:
    """UserError naming how ``weights`` and the architecture of ``spec`` differ, if they do."""
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in weights.items()}
    missing, unexpected = expected.keys() - given.keys(), given.keys() - expected.keys()
    shapes = [k for k in expected.keys() & given.keys() if expected[k] != given[k]]
    if not (missing or unexpected or shapes):
        return
    what = f"model={spec.model}, num_classes={spec.num_classes}, aux_heads={spec.aux_heads}"
    problems = []
    if missing:
        problems.append(f"missing {_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected {_keys(unexpected)}")
    if shapes:
        k = sorted(shapes)[0]
        problems.append(f"{len(shapes)} shape mismatch(es), e.g. {k}: weights {given[k]}, "
                        f"spec {expected[k]}")
    hint = ""
    if any(".aux" in k for k in unexpected) and not spec.aux_heads:
        hint = "; the weights have auxiliary heads: aux_heads must be true"
    elif any(".aux" in k for k in missing) and spec.aux_heads:
        hint = "; the weights have no auxiliary heads: aux_heads must be false"
    elif any(k.endswith("running_mean") for k in unexpected):
        hint = f"; the weights have batch-norm layers that {spec.model} lacks (a _bn variant?)"
    elif any(k.endswith("running_mean") for k in missing):
        hint = f"; {spec.model} has batch-norm layers the weights lack (a variant without _bn?)"
    raise UserError(f"the weights do not fit the spec ({what}): " + "; ".join(problems) + hint)


def load_export(folder: str | Path) -> tuple[ExportSpec, nn.Module]:
    """The spec and the network it describes, with its weights, in eval mode."""
    folder = Path(folder)
    spec = read_spec(folder)
    if not (folder / WEIGHTS_FILE).exists():
        raise UserError(f"{folder}: no {WEIGHTS_FILE}; re-export the trial")
    weights = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    net = spec.build()
    check_weights(net, weights, spec)
    net.load_state_dict(weights)
    return spec, net.eval()


def preprocess(images: np.ndarray, spec: ExportSpec) -> torch.Tensor:
    """N x H x W x 3 uint8 images decoded at ``load_size`` -> the network's input, as the
    trial's evaluation prepared it: centre crop, scale to [0, 1], standardise."""
    from trainables.batches import Normalize, centre_crop, nchw

    crop = centre_crop(nchw(images), spec.image_size)
    return Normalize(spec.mean, spec.std)(crop.contiguous())
