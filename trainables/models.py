"""One model factory: torchvision's classic CNNs, any timm model, and a small CNN.

Every model comes back wrapped in ``Net``, whose forward returns ``(logits, aux_logits)``
so the loop never branches on model family, and which knows which of its modules are the
new classifier heads (the rest is the backbone that strategies freeze).
"""
from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from trainables.errors import UserError

# torchvision name -> module paths of its classifier layers to replace (main head first)
TORCHVISION_HEADS: dict[str, tuple[str, ...]] = {
    "resnet18": ("fc",),
    "resnet50": ("fc",),
    "vgg16": ("classifier.6",),
    "mobilenet_v2": ("classifier.1",),
    "googlenet": ("fc", "aux1.fc2", "aux2.fc2"),
}
AUX_MODELS = {"googlenet"}
CUSTOM = "small_cnn"
TIMM_PREFIX = "timm/"


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
class DataConfig:
    """How a model wants its input: its pretrained input size, resize interpolation,
    normalisation, and the centre-crop fraction used at evaluation."""

    input_size: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # ImageNet
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    crop_pct: float = 0.875


def data_config(name: str) -> DataConfig:
    """The model's own preprocessing: timm's pretrained config (what ``resolve_data_config``
    reads), or torchvision's ImageNet recipe (224 px, bilinear, crop 0.875)."""
    timm_name = _timm_name(name)
    if not timm_name:
        return DataConfig()
    import timm

    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None:
        return DataConfig()
    interpolation = cfg.interpolation if cfg.interpolation in ("bilinear", "bicubic") \
        else "bilinear"
    return DataConfig(int(cfg.input_size[-1]), interpolation, tuple(cfg.mean), tuple(cfg.std),
                      float(cfg.crop_pct or 0.875))


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


@dataclass(frozen=True)
class BuiltModel:
    net: Net
    pretrained: bool  # whether pretrained weights were really loaded


class SmallCNN(nn.Module):
    """Four conv blocks and a linear head: a from-scratch baseline that trains fast on CPU."""

    def __init__(self, num_classes: int = 1000, width: int = 32, head: HeadSpec = HeadSpec()):
        super().__init__()
        layers, channels = [], 3
        for i in range(4):
            out = width * 2 ** i
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = head.build(channels, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


def known_models() -> list[str]:
    """Names the factory builds without timm's catalogue (every timm name works too)."""
    return [*TORCHVISION_HEADS, CUSTOM]


def _timm_name(name: str) -> str | None:
    import timm

    bare = name[len(TIMM_PREFIX):] if name.startswith(TIMM_PREFIX) else name
    if name in TORCHVISION_HEADS or name == CUSTOM:
        return None
    return bare if timm.is_model(bare) else None


def is_timm_model(name: str) -> bool:
    return _timm_name(name) is not None


def check_model(name: str, aux_heads: bool = False, pretrained: str = "auto") -> None:
    """Raise UserError unless the factory can build ``name`` as asked (aux heads, weights)."""
    if not (name in TORCHVISION_HEADS or name == CUSTOM or _timm_name(name)):
        raise UserError(f"unknown model '{name}': use one of {', '.join(known_models())} "
                        "or a timm model name (see timm.list_models())")
    if aux_heads and name not in AUX_MODELS:
        raise UserError(f"model '{name}' has no auxiliary heads; use strategy=base "
                        f"(auxiliary heads exist on {', '.join(sorted(AUX_MODELS))})")
    if name == CUSTOM and pretrained == "true":
        raise weights_unavailable(name, "")


def create_model(name: str, num_classes: int, pretrained: str = "auto",
                 aux_heads: bool = False, offline: bool = False, head: HeadSpec = HeadSpec(),
                 image_size: int = 0) -> BuiltModel:
    """Build ``name`` with its classifier(s) resized to ``num_classes``.

    ``pretrained``: ``true`` loads weights or raises UserError; ``auto`` tries and falls back
    to random initialisation with a warning; ``false`` never loads. ``offline`` skips the
    attempt (the sweep driver already found the weights unavailable). ``head`` shapes the
    main classifier; ``image_size`` (if not 0) is passed to timm models that fix their input
    size at creation (ViT, Swin).
    """
    check_model(name, aux_heads, pretrained)
    if name == CUSTOM:
        return BuiltModel(Net(SmallCNN(num_classes, head=head), ("head",)), False)
    want = pretrained != "false"
    loaded, reason = False, "the sweep driver found them unavailable"
    if want and not offline:
        try:
            body = _build(name, aux_heads, pretrained=True, image_size=image_size)
            loaded = True
        except Exception as exc:  # network, missing file, corrupt cache: all mean "not here"
            reason = _reason(exc)
    if want and not loaded:
        if pretrained == "true":
            raise weights_unavailable(name, reason)
        if not offline:  # the driver has said it once for the whole sweep
            warnings.warn(f"pretrained weights for '{name}' unavailable ({reason}); "
                          "training from random initialisation (pretrained=false in the table)")
    if not loaded:
        body = _build(name, aux_heads, pretrained=False, image_size=image_size)
    heads = _replace_heads(name, body, num_classes, head)
    return BuiltModel(Net(body, heads), loaded)


def _build(name: str, aux_heads: bool, pretrained: bool, image_size: int = 0) -> nn.Module:
    timm_name = _timm_name(name)
    if timm_name:
        import timm

        if image_size and image_size != data_config(name).input_size:
            try:  # transformers fix their patch grid at creation
                return timm.create_model(timm_name, pretrained=pretrained, img_size=image_size)
            except TypeError:  # convolutional models take any size and no img_size argument
                pass
        return timm.create_model(timm_name, pretrained=pretrained)
    import torchvision

    if name == "googlenet" and pretrained:
        # torchvision loads GoogLeNet weights only into a model with aux heads (and its own
        # input transform); drop the heads afterwards when the strategy does not use them.
        body = torchvision.models.get_model(name, weights="DEFAULT", aux_logits=True)
        if not aux_heads:
            body.aux_logits, body.aux1, body.aux2 = False, None, None
        return body
    if name == "googlenet":
        return torchvision.models.get_model(name, weights=None, aux_logits=aux_heads,
                                            transform_input=False, init_weights=True)
    return torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None)


def _replace_heads(name: str, body: nn.Module, num_classes: int,
                   spec: HeadSpec = HeadSpec()) -> tuple[str, ...]:
    """Swap the classifier layer(s) for new ones of ``num_classes`` outputs (the first, main
    one shaped by ``spec``); returns their module paths."""
    if _timm_name(name):
        body.reset_classifier(num_classes)
        names = body.pretrained_cfg.get("classifier") or "head"
        names = tuple(names) if isinstance(names, (list, tuple)) else (names,)
        paths = list(names)
    else:
        paths = list(TORCHVISION_HEADS[name])
    present = []
    for i, path in enumerate(paths):
        *parents, attr = path.split(".")
        parent = body
        for part in parents:
            parent = getattr(parent, part, None)
        old = getattr(parent, attr, None) if parent is not None else None
        if not isinstance(old, nn.Linear):
            continue  # GoogLeNet's aux heads switched off (None), or a head timm left empty
        new = spec.build(old.in_features, num_classes) if i == 0 \
            else nn.Linear(old.in_features, num_classes)
        setattr(parent, attr, new)
        present.append(path)
    if _timm_name(name):
        return tuple(present) or names
    if name == "googlenet":  # the whole auxiliary branch is head, not backbone
        present = ["fc"] + [p.split(".")[0] for p in present if p.startswith("aux")]
    return tuple(present)


def _reason(exc: BaseException) -> str:
    """One short line saying why loading failed."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:160]


def weights_unavailable(name: str, reason: str) -> UserError:
    """The error for ``pretrained=true`` when the weights cannot be had."""
    if name == CUSTOM:
        return UserError("small_cnn has no pretrained weights; use --set pretrained=false")
    return UserError(f"pretrained weights for '{name}' could not be loaded ({reason}); "
                     f"pre-seed {weights_location(name)} or use --set pretrained=false")


def weights_location(name: str) -> str:
    """Where pretrained weights for ``name`` are looked up on this machine."""
    if _timm_name(name):
        from huggingface_hub.constants import HF_HUB_CACHE

        return f"the Hugging Face cache ({HF_HUB_CACHE}, set HF_HOME)"
    from torchvision.models import get_model_weights

    url = get_model_weights(name).DEFAULT.url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url)) + \
        " (set TORCH_HOME)"


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (or $HF_ENDPOINT) answers a TCP connect."""
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def use_hub_offline() -> None:
    """Read timm weights from the local Hugging Face cache only, with no network retries
    (which take most of a minute per file when the hub cannot be reached). Trials started
    from this process inherit it through the environment."""
    import huggingface_hub.constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = True


def fetch_pretrained(name: str) -> str | None:
    """Make sure pretrained weights for ``name`` are in the local cache, downloading once.

    Returns None when they are there, else the reason they could not be had.
    """
    if name == CUSTOM:
        return "small_cnn has no pretrained weights"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _build(name, aux_heads=False, pretrained=True)
        return None
    except Exception as exc:
        return _reason(exc)
