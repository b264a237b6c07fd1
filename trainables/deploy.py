"""A trained model as a folder that rebuilds exactly what was trained.

The folder holds ``spec.json`` (the trial record's model build and preprocessing, classes),
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

from trainables.data.decode import RESAMPLE
from trainables.errors import UserError
from trainables.models import ModelBuild, rebuild
from trainables.record import Preprocess, TrialRecord
from trainables.weights import mismatch

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "weights.pt"
TORCHSCRIPT_FILE = "model.torchscript.pt"
FORMAT = 2  # 2: the model and preprocessing as the trial recorded them


@dataclass(frozen=True)
class ExportSpec:
    """What the network is and what it expects: the trial record's model build and
    preprocessing, its classes, and where it came from."""

    model: ModelBuild
    preprocess: Preprocess
    class_names: list[str]
    source: dict  # experiment, trial, variant and scores it came from
    format: int = FORMAT

    @classmethod
    def from_record(cls, record: TrialRecord, source: dict) -> "ExportSpec":
        return cls(record.model, record.preprocess, list(record.class_names), source)

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def image_size(self) -> int:
        return self.preprocess.image_size

    @property
    def load_size(self) -> int:
        return self.preprocess.load_size

    @property
    def interpolation(self) -> str:
        return self.preprocess.interpolation

    def build(self, empty: bool = False) -> nn.Module:
        """The network (``empty``: uninitialised, for weights to be loaded into)."""
        return rebuild(self.model, empty)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict) -> "ExportSpec":
        return cls(ModelBuild(**raw["model"]), Preprocess.from_json(raw["preprocess"]),
                   [str(c) for c in raw["class_names"]], dict(raw["source"]),
                   int(raw["format"]))


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
    net = spec.build(empty=True)
    check_weights(net, weights, spec)
    net.load_state_dict(weights)
    net.eval()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SPEC_FILE).write_text(json.dumps(spec.to_json(), indent=1))
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
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("format") != FORMAT:
            raise UserError(f"{path}: export format {raw.get('format')}, this version reads "
                            f"{FORMAT}; re-export the trial")
        spec = ExportSpec.from_json(raw)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UserError(f"{path}: not a valid export spec ({type(exc).__name__}: {exc}); "
                        "re-export the trial") from None
    if len(spec.class_names) != spec.num_classes:
        raise UserError(f"{path}: {len(spec.class_names)} class names for num_classes "
                        f"{spec.num_classes}; they must agree")
    _check_values(spec, path)
    return spec


def _check_values(spec: "ExportSpec", path: Path) -> None:
    """An export folder may come from anyone: its numbers must describe a real
    preprocessing and a model this version builds, or it is refused in one line (a zero
    std would predict NaN, an unknown interpolation or model would end in a traceback)."""
    import math

    from trainables.zoo import model_spec

    pre = spec.preprocess
    problem = None
    if len(pre.mean) != 3 or len(pre.std) != 3:
        problem = f"mean and std need 3 values each (got {len(pre.mean)} and {len(pre.std)})"
    elif not all(math.isfinite(v) for v in (*pre.mean, *pre.std)) or min(pre.std) <= 0:
        problem = f"mean {list(pre.mean)} and std {list(pre.std)} must be finite, std above 0"
    elif pre.interpolation not in RESAMPLE:
        problem = f"unknown interpolation {pre.interpolation!r}"
    elif not 16 <= pre.image_size <= pre.load_size <= 4096:
        problem = (f"image_size {pre.image_size} and load_size {pre.load_size} must satisfy "
                   "16 <= image_size <= load_size <= 4096")
    elif spec.num_classes < 2:
        problem = f"num_classes {spec.num_classes}: a classifier needs at least 2"
    if problem is None:
        try:
            model_spec(spec.model.model)
        except UserError as exc:
            problem = str(exc).split(":")[0]
    if problem:
        raise UserError(f"{path}: not a valid export spec ({problem}); re-export the trial")


def check_weights(net: nn.Module, weights: dict, spec: ExportSpec) -> None:
    """UserError naming how ``weights`` and the architecture of ``spec`` differ, if they do."""
    expected = net.state_dict()
    problems = mismatch(expected, weights)
    if not problems:
        return
    missing, unexpected = expected.keys() - weights.keys(), weights.keys() - expected.keys()
    what = (f"model={spec.model.model}, num_classes={spec.num_classes}, "
            f"aux_heads={spec.model.aux_heads}")
    hint = ""
    if any(".aux" in k for k in unexpected) and not spec.model.aux_heads:
        hint = "; the weights have auxiliary heads: aux_heads must be true"
    elif any(".aux" in k for k in missing) and spec.model.aux_heads:
        hint = "; the weights have no auxiliary heads: aux_heads must be false"
    elif any(k.endswith("running_mean") for k in unexpected):
        hint = f"; the weights have batch-norm layers that {spec.model.model} lacks (a _bn variant?)"
    elif any(k.endswith("running_mean") for k in missing):
        hint = f"; {spec.model.model} has batch-norm layers the weights lack (a variant without _bn?)"
    raise UserError(f"the weights do not fit the spec ({what}): " + "; ".join(problems) + hint)


def load_export(folder: str | Path) -> tuple[ExportSpec, nn.Module]:
    """The spec and the network it describes, with its weights, in eval mode."""
    folder = Path(folder)
    spec = read_spec(folder)
    if not (folder / WEIGHTS_FILE).exists():
        raise UserError(f"{folder}: no {WEIGHTS_FILE}; re-export the trial")
    try:
        weights = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, pickled code
        raise UserError(f"{folder / WEIGHTS_FILE}: cannot be read ({type(exc).__name__}); "
                        "re-export the trial") from None
    net = spec.build(empty=True)
    check_weights(net, weights, spec)
    net.load_state_dict(weights)
    return spec, net.eval()


def preprocess(images: np.ndarray, spec: ExportSpec) -> torch.Tensor:
    """N x H x W x 3 uint8 images decoded at ``load_size`` -> the network's input, as the
    trial's evaluation prepared it: centre crop, scale to [0, 1], standardise."""
    from trainables.batches import Normalize, centre_crop, nchw

    crop = centre_crop(nchw(images), spec.image_size)
    return Normalize(spec.preprocess.mean, spec.preprocess.std)(crop.contiguous())
