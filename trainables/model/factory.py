"""One model factory: torchvision's classic CNNs, any timm model, and a small CNN.

Every model comes back wrapped in ``Net``, whose forward returns ``(logits, aux_logits)``
so the loop never branches on model family, and which knows which of its modules are the
new classifier heads (the rest is the backbone that strategies freeze). With it comes a
``ModelBuild``: what the network was built with, the weights actually loaded included, from
which ``rebuild`` makes the same architecture again (for export and prediction).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from trainables.core.errors import UserError
from trainables.model import weights as W
from trainables.model.families import DataConfig, family_of
from trainables.model.nets import EXPANDED, SCALES, TAPS, HeadSpec, Net, SmallCNN, Tapped
from trainables.model.sizes import Verdicts
from trainables.model.zoo import MODELS, ModelSpec, model_spec

__all__ = [
    "BuiltModel",
    "DataConfig",
    "HeadSpec",
    "MODELS",
    "ModelBuild",
    "ModelSpec",
    "Net",
    "SmallCNN",
    "check_model",
    "create_model",
    "data_config",
    "fetch_pretrained",
    "model_spec",
    "rebuild",
]


def data_config(name: str) -> DataConfig:
    """The model's own preprocessing: timm's pretrained config (what ``resolve_data_config``
    reads), or torchvision's ImageNet recipe (224 px, bilinear, crop 0.875)."""
    spec = model_spec(name)
    return family_of(spec).data_config(spec)


@dataclass(frozen=True)
class ModelBuild:
    """What a trial's network was built with: enough to build the same architecture again.
    ``weights`` names the pretrained weights really loaded ("" for random initialisation);
    ``arch`` holds constructor arguments that loading them implied (GoogLeNet's
    ``transform_input``, a transformer's ``img_size``); ``taps``, what the head reads
    (``nets.TAPS``)."""

    model: str
    num_classes: int
    aux_heads: bool = False
    head_dropout: float = 0.0
    head_hidden: int = 0
    weights: str = ""
    arch: dict = field(default_factory=dict)
    taps: str = "last"

    @property
    def pretrained(self) -> bool:
        return bool(self.weights)

    @property
    def head(self) -> HeadSpec:
        return HeadSpec(self.head_dropout, self.head_hidden, standardize=self.taps != "last")


@dataclass(frozen=True)
class BuiltModel:
    net: Net
    build: ModelBuild

    @property
    def pretrained(self) -> bool:
        return self.build.pretrained


def check_model(
    name: str,
    aux_heads: bool = False,
    pretrained: str = "auto",
    weights: str = "",
    taps: str = "last",
) -> None:
    """Raise UserError unless the factory can build ``name`` as asked (aux heads, weights,
    what the head reads)."""
    spec = model_spec(name)
    if taps not in TAPS:
        raise UserError(f"bad value taps={taps!r}: choose one of {', '.join(TAPS)}")
    if taps != "last" and not spec.trunk:
        with_trunk = ", ".join(n for n in MODELS if MODELS[n].trunk)
        raise UserError(
            f"taps={taps} reads the stages of a model's trunk, which '{name}' does not "
            f"name; use taps=last, or one of {with_trunk}"
        )
    if taps in EXPANDED and not spec.expands:
        expanding = ", ".join(n for n in MODELS if MODELS[n].expands)
        raise UserError(
            f"taps={taps} reads the expanded maps of inverted residual blocks, which "
            f"'{name}' has none of; use taps={EXPANDED[taps]}, or one of {expanding}"
        )
    if aux_heads and not spec.aux_heads:
        with_aux = ", ".join(n for n in MODELS if MODELS[n].aux_heads)
        raise UserError(
            f"model '{name}' has no auxiliary heads; use strategy=base "
            f"(auxiliary heads exist on {with_aux})"
        )
    if not family_of(spec).has_weights and (pretrained == "true" or weights):
        raise W.weights_unavailable(name, "")
    if weights:
        W.resolve_tag(spec, weights)


def check_input_size(
    name: str, aux_heads: bool, image_size: int, verdicts: Verdicts | None = None
) -> None:
    """Raise UserError if ``name`` cannot take ``image_size`` px images (ConvNeXt's and
    VGG16's downsampling leave nothing of 16 px), found before any trial starts: the
    architecture is built and run on the meta device (shapes only, no memory, no weights),
    once per architecture code (``verdicts``: what earlier checks found, sizes.py)."""
    spec = model_spec(name)
    verdicts = verdicts if verdicts is not None else Verdicts()

    def works(size: int) -> bool | None:
        if not verdicts.known(name, aux_heads, size):
            verdicts.put(name, aux_heads, size, _runs_on_meta(spec, aux_heads, size))
        return verdicts.get(name, aux_heads, size)

    try:
        if works(image_size) is not False:
            return
        larger = range(image_size + 16 - image_size % 16, 1025, 16)
        fits = next((n for n in larger if works(n)), None)
    finally:
        verdicts.save()
    fix = f"use `image_size={fits}` or more" if fits else "use a larger image_size"
    raise UserError(
        f"model '{name}' cannot take {image_size} px images (its downsampling "
        f"leaves nothing of them); {fix}, or another model"
    )


def _runs_on_meta(spec: ModelSpec, aux_heads: bool, size: int) -> bool | None:
    """Whether a forward pass at ``size`` px works; None if the meta device cannot tell."""
    try:
        with torch.device("meta"):
            body, _ = _build(spec, _arch(spec, aux_heads, size), "", init=False)
            body.eval()
            body(torch.empty(1, 3, size, size))
    except NotImplementedError:  # an operation without a meta kernel: the trial will tell
        return None
    except (RuntimeError, ValueError, AssertionError):
        return False
    return True


def create_model(
    name: str,
    num_classes: int,
    pretrained: str = "auto",
    aux_heads: bool = False,
    offline: bool = False,
    head: HeadSpec = HeadSpec(),
    image_size: int = 0,
    weights: str = "",
    taps: str = "last",
) -> BuiltModel:
    """Build ``name`` with its classifier(s) resized to ``num_classes``.

    ``pretrained``: ``true`` loads weights or raises UserError; ``auto`` tries and falls back
    to random initialisation with a warning; ``false`` never loads. ``weights`` picks the
    variant (default: the library's default). ``offline`` skips the attempt (the sweep
    driver already found the weights unavailable). ``head`` shapes the main classifier;
    ``image_size`` (if not 0) is passed to timm models that fix their input size at
    creation (ViT, Swin). ``taps``: what the new head reads (``nets.TAPS``).
    """
    check_model(name, aux_heads, pretrained, weights, taps)
    spec = model_spec(name)
    arch = _arch(spec, aux_heads, image_size)
    want = pretrained != "false" and family_of(spec).has_weights
    loaded, reason, body = "", "the sweep driver found them unavailable", None
    if want and not offline:
        tag = W.resolve_tag(spec, weights)
        try:
            body, arch = _build(spec, arch, tag)
            loaded = tag
        except Exception as exc:  # network, missing file, corrupt cache: all mean "not here"
            reason = W.short_reason(exc)
    if want and not loaded:
        if pretrained == "true":
            raise W.weights_unavailable(name, reason, weights)
        if not offline:  # the driver has said it once for the whole sweep
            warnings.warn(
                f"pretrained weights for '{name}' unavailable ({reason}); "
                "training from random initialisation (pretrained=false in the table)",
                stacklevel=2,
            )
    if body is None:
        body, arch = _build(spec, arch, "", init=True)
    build = ModelBuild(name, num_classes, aux_heads, head.dropout, head.hidden, loaded, arch, taps)
    return BuiltModel(_with_heads(spec, body, build), build)


def rebuild(build: ModelBuild, empty: bool = False) -> Net:
    """The architecture ``build`` describes, without loading any pretrained weights: the
    trial's own weights are loaded into it next. ``empty``: skip the library's weight
    initialisation (for VGG16 seconds of work that loading overwrites) wherever every
    buffer is saved in the state dict; the values are then garbage until weights load."""
    spec = model_spec(build.model)
    if empty:
        try:
            with torch.device("meta"):
                body, _ = _build(spec, dict(build.arch), "", init=False)
                net = _with_heads(spec, body, build)
        except Exception:  # a model that reads tensor values while it is built
            net = None
        if net is not None and set(dict(net.named_buffers())) <= set(net.state_dict()):
            return net.to_empty(device="cpu")
    body, _ = _build(spec, dict(build.arch), "", init=False)
    return _with_heads(spec, body, build)


def _arch(spec: ModelSpec, aux_heads: bool, image_size: int) -> dict:
    """Constructor arguments asked for before any weights are loaded."""
    return family_of(spec).arch(spec, aux_heads, image_size)


def _build(spec: ModelSpec, arch: dict, tag: str, init: bool = True) -> tuple[nn.Module, dict]:
    """The library's network with pretrained weights ``tag`` ("" for none); returns it with
    the constructor arguments it was really built with."""
    return family_of(spec).build(spec, arch, tag, init)


def _with_heads(spec: ModelSpec, body: nn.Module, build: ModelBuild) -> Net:
    """Swap the classifier layer(s) for new ones of ``num_classes`` outputs (the first, main
    one shaped by the head spec, and reading every stage with ``taps=stages``, at two
    sizes with ``taps=pyramid``), and wrap
    the body in ``Net``."""
    width = 0
    if build.taps != "last":
        *parents, attr = spec.trunk.split(".")
        parent = body.get_submodule(".".join(parents))
        tapped = Tapped(getattr(parent, attr), SCALES[build.taps], build.taps in EXPANDED)
        setattr(parent, attr, tapped)
        width = tapped.width
    family = family_of(spec)
    paths = family.head_paths(spec, body, build.num_classes)
    present = []
    for i, path in enumerate(paths):
        *parents, attr = path.split(".")
        parent = body
        for part in parents:
            parent = getattr(parent, part, None)
        old = getattr(parent, attr, None) if parent is not None else None
        if not isinstance(old, nn.Linear):
            continue  # GoogLeNet's aux heads switched off (None), or a head timm left empty
        new = (
            build.head.build(width or old.in_features, build.num_classes)
            if i == 0
            else nn.Linear(old.in_features, build.num_classes)
        )
        setattr(parent, attr, new)
        present.append(path)
    return Net(body, family.net_heads(spec, paths, present))


def fetch_pretrained(name: str, weights: str = "") -> str | None:
    """Make sure the pretrained weights ``weights`` of ``name`` are on this machine,
    downloading them once. Returns None when they are, else the reason they are not."""
    spec = model_spec(name)
    if not family_of(spec).has_weights:
        return f"{name} has no pretrained weights"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _build(spec, _arch(spec, False, 0), W.resolve_tag(spec, weights))
        return None
    except UserError:
        raise
    except Exception as exc:
        return W.short_reason(exc)
