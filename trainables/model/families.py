"""One adapter per kind of model: how it is built, which of its layers are the classifier
heads, what input it wants, and where its pretrained weights live.

The factory (factory.py) and the weights store (weights.py) ask a model's adapter
(``family_of(spec)``) and never branch on its family: a new source of models (another
library, a hub of one's own) is one ``Family`` subclass registered in ``FAMILIES`` (the
``@FAMILIES.register_instance(NAME)`` decorator), and a
model that needs more than its family gives (GoogLeNet's auxiliary heads and input
transform) is a subclass of its family's adapter, named by the model's ``ModelSpec.adapter``.

- ``Torchvision``: ``torchvision.models.get_model``; weights in the torch hub cache
  (``$TORCH_HOME/hub/checkpoints/`` under the published file name).
- ``GoogLeNet``: torchvision's, with its auxiliary classifiers and input transform.
- ``Timm``: ``timm.create_model``; weights from the Hugging Face cache or from this
  project's local store (``$VISIONSWEEP_CACHE/weights/timm/NAME.TAG/``), which timm reads
  through ``pretrained_cfg_overlay=dict(file=...)``.
- ``Custom``: this project's own networks (``nets.NETS``), which have no pretrained
  weights.
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trainables.core.errors import UserError, unpickling_reason
from trainables.core.registry import Registry
from trainables.model.nets import NETS
from trainables.model.zoo import ModelSpec


@dataclass(frozen=True)
class DataConfig:
    """How a model wants its input: its pretrained input size, resize interpolation,
    normalisation, and the centre-crop fraction used at evaluation."""

    input_size: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # ImageNet
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    crop_pct: float = 0.875


class Family:
    """The adapter of one kind of model. The defaults are those of a model without
    pretrained weights, whose heads are the modules its ``ModelSpec.heads`` names."""

    has_weights = True  # publishes pretrained weights
    from_hub = False  # they come from the Hugging Face hub
    publishes_names = False  # its published files are named NAME-HASH.pth (sha256-checked)

    # -- the network

    def data_config(self, spec: ModelSpec) -> DataConfig:
        """The model's own preprocessing (default: torchvision's ImageNet recipe)."""
        return DataConfig()

    def arch(self, spec: ModelSpec, aux_heads: bool, image_size: int) -> dict:
        """Constructor arguments asked for before any weights are loaded."""
        return {}

    def build(
        self, spec: ModelSpec, arch: dict, tag: str, init: bool = True
    ) -> tuple[nn.Module, dict]:
        """The library's network with pretrained weights ``tag`` ("" for none), and the
        constructor arguments it was really built with. ``init``: run the library's weight
        initialisation (not needed where weights are loaded next)."""
        raise NotImplementedError

    def head_paths(self, spec: ModelSpec, body: nn.Module, num_classes: int) -> list[str]:
        """The module paths of the classifier layers to replace, main head first."""
        return list(spec.heads)

    def net_heads(self, spec: ModelSpec, paths: list[str], replaced: list[str]) -> tuple[str, ...]:
        """The modules ``Net`` counts as head (the rest is the backbone strategies
        freeze), given the paths whose layers were ``replaced``."""
        return tuple(replaced)

    # -- its pretrained weights

    def tags(self, spec: ModelSpec) -> tuple[list[str], str]:
        """The model's weights variants and its default one."""
        return [], ""

    def here(self, spec: ModelSpec, tag: str) -> Path | None:
        """Where variant ``tag`` is on this machine; None: not here."""
        return None

    def looked_up(self, spec: ModelSpec, tag: str) -> str:
        """Where variant ``tag`` is looked up, in a few words."""
        return ""

    def location(self, spec: ModelSpec, tag: str) -> str:
        """Where variant ``tag`` is looked up, with how to move it, for messages."""
        return self.looked_up(spec, tag)

    def reference_state(self, spec: ModelSpec, tag: str) -> dict:
        """The state dict the published weights ``tag`` fill, exactly."""
        raise NotImplementedError

    def published_tag(self, spec: ModelSpec, filename: str) -> str | None:
        """The variant whose published file is called ``filename``, if one is."""
        return None

    def place_for(self, spec: ModelSpec, tag: str, filename: str) -> Path:
        """Where an added file of variant ``tag`` goes, room made for it."""
        raise NotImplementedError


# a ModelSpec's ``adapter`` (or, where it names none, its ``family``) -> its adapter
FAMILIES: Registry[Family] = Registry("model family", checked=False)


def family_of(spec: ModelSpec) -> Family:
    """The adapter that builds ``spec`` and keeps its weights."""
    return FAMILIES[spec.adapter or spec.family]


@FAMILIES.register_instance("custom")
class Custom(Family):
    has_weights = False

    def build(self, spec, arch, tag, init=True):
        return NETS[spec.name](), {}


# -- torchvision --------------------------------------------------------------------------


def _torchvision_enum(name: str):
    from torchvision.models import get_model_weights

    return get_model_weights(name)


def torchvision_file(name: str, tag: str) -> Path:
    """Where torchvision looks for ``name``'s weights ``tag`` (and puts a download)."""
    url = _torchvision_enum(name)[tag].url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def check_data_only(path: Path) -> None:
    """A weights file must hold tensors and plain containers only: torchvision's loader
    unpickles a cached file with ``weights_only=False``, so a file placed in the cache under
    a published name could run code. Probe it with torch's weights-only unpickler first
    (memory-mapped: no second copy in memory); a missing file is torchvision's to fetch."""
    if not path.is_file():
        return
    import zipfile

    try:  # memory-mapped where the format allows (torchvision's older files predate it)
        torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:
        reason = unpickling_reason(exc)
        raise UserError(
            f"{path}: not a plain weights file ({reason}); it may have been "
            "tampered with: delete it and add the published file again with "
            "python sweeps/weights.py add"
        ) from None


@FAMILIES.register_instance("torchvision")
class Torchvision(Family):
    publishes_names = True

    def constructor(self, arch: dict, tag: str, init: bool) -> dict:
        """The keyword arguments of ``get_model`` for ``arch``."""
        return dict(arch)

    def built_arch(self, arch: dict, body: nn.Module) -> dict:
        """The constructor arguments the network was really built with."""
        return arch

    def reference_arguments(self) -> dict:
        """What the published weights' architecture is built with beyond its classes."""
        return {}

    def build(self, spec, arch, tag, init=True):
        import torchvision

        kwargs = self.constructor(arch, tag, init)
        if tag:  # torchvision unpickles its cached file in full: check it holds data only
            check_data_only(torchvision_file(spec.name, tag))
        body = torchvision.models.get_model(spec.name, weights=tag or None, **kwargs)
        return body, self.built_arch(arch, body)

    def tags(self, spec):
        enum = _torchvision_enum(spec.name)
        return [m for m in enum.__members__ if m != "DEFAULT"], enum.DEFAULT.name

    def here(self, spec, tag):
        place = torchvision_file(spec.name, tag)
        return place if place.is_file() else None

    def looked_up(self, spec, tag):
        return str(torchvision_file(spec.name, tag))

    def location(self, spec, tag):
        return f"{torchvision_file(spec.name, tag)} (set TORCH_HOME)"

    def reference_state(self, spec, tag):
        import torchvision

        meta = _torchvision_enum(spec.name)[tag].meta
        kwargs = {"num_classes": len(meta["categories"]), **self.reference_arguments()}
        with torch.device("meta"):
            return torchvision.models.get_model(spec.name, weights=None, **kwargs).state_dict()

    def published_tag(self, spec, filename):
        enum = _torchvision_enum(spec.name)
        for tag in self.tags(spec)[0]:
            if os.path.basename(enum[tag].url) == filename:
                return tag
        return None

    def place_for(self, spec, tag, filename):
        return torchvision_file(spec.name, tag)


@FAMILIES.register_instance("googlenet")
class GoogLeNet(Torchvision):
    """torchvision's GoogLeNet: two auxiliary classifiers (heads a strategy may train) and
    an input transform that torchvision turns on with its weights."""

    def arch(self, spec, aux_heads, image_size):
        return {"aux_logits": aux_heads}

    def constructor(self, arch, tag, init):
        kwargs = dict(arch)
        if not tag:
            kwargs.setdefault("transform_input", False)
            kwargs["init_weights"] = init  # torchvision's own initialisation, for training
        elif not kwargs.get("aux_logits"):
            # with weights torchvision refuses aux_logits=False; left out, it loads them into
            # a model with aux heads and then drops the heads
            kwargs.pop("aux_logits", None)
        return kwargs

    def build(self, spec, arch, tag, init=True):
        # torchvision warns, in two lines, that its pretrained GoogLeNet's auxiliary heads
        # are not pretrained: here the whole auxiliary branch is a head the trial trains
        # (``net_heads``), which is what the warning asks for
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "auxiliary heads in the pretrained", UserWarning)
            return super().build(spec, arch, tag, init)

    def built_arch(self, arch, body):
        return {**arch, "transform_input": bool(body.transform_input)}

    def reference_arguments(self):
        return {"aux_logits": True, "init_weights": False}

    def net_heads(self, spec, paths, replaced):
        # the whole auxiliary branch is head, not backbone
        return ("fc", *(p.split(".")[0] for p in replaced if p.startswith("aux")))


# -- timm ---------------------------------------------------------------------------------


def timm_store() -> Path:
    from trainables.core.files import default_cache_dir

    return default_cache_dir() / "weights" / "timm"


def timm_folder(timm_name: str, tag: str) -> Path:
    """Where ``sweeps/weights.py add`` puts the file of this timm model and tag."""
    return timm_store() / f"{timm_name}.{tag}"


def local_timm_file(timm_name: str, tag: str) -> Path | None:
    """A weights file added with ``sweeps/weights.py add`` for this timm model and tag."""
    folder = timm_folder(timm_name, tag)
    files = sorted(folder.glob("*")) if folder.is_dir() else []
    files = [f for f in files if not f.name.startswith(".")]
    return files[0] if files else None


def _hf_cached(timm_name: str, tag: str) -> Path | None:
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(f"{timm_name}.{tag}")
    if cfg is None or not cfg.hf_hub_id:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin", cfg.hf_hub_filename):
        if filename:
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str):
                return Path(found)
    return None


@FAMILIES.register_instance("timm")
class Timm(Family):
    from_hub = True

    def data_config(self, spec):
        """timm's pretrained config, what ``resolve_data_config`` reads."""
        import timm

        cfg = timm.models.get_pretrained_cfg(spec.timm_name)
        if cfg is None:
            return DataConfig()
        interpolation = (
            cfg.interpolation if cfg.interpolation in ("bilinear", "bicubic") else "bilinear"
        )
        return DataConfig(
            int(cfg.input_size[-1]),
            interpolation,
            tuple(cfg.mean),
            tuple(cfg.std),
            float(cfg.crop_pct or 0.875),
        )

    def arch(self, spec, aux_heads, image_size):
        if image_size and image_size != self.data_config(spec).input_size:
            return {"img_size": image_size}  # transformers fix their patch grid at creation
        return {}

    def build(self, spec, arch, tag, init=True):
        import timm

        name = f"{spec.timm_name}.{tag}" if tag else spec.timm_name
        local = local_timm_file(spec.timm_name, tag) if tag else None
        extra = {"pretrained_cfg_overlay": {"file": str(local)}} if local else {}
        try:
            return timm.create_model(name, pretrained=bool(tag), **extra, **arch), arch
        except TypeError:
            if "img_size" not in arch:
                raise
            # a convolutional model: it takes any input size and no img_size argument
            arch = {k: v for k, v in arch.items() if k != "img_size"}
            return timm.create_model(name, pretrained=bool(tag), **extra, **arch), arch

    def head_paths(self, spec, body, num_classes):
        body.reset_classifier(num_classes)
        names = body.pretrained_cfg.get("classifier") or "head"
        return list(names) if isinstance(names, (list, tuple)) else [names]

    def net_heads(self, spec, paths, replaced):
        return tuple(replaced) or tuple(paths)

    def tags(self, spec):
        import timm

        found = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{spec.timm_name}.*")]
        default = timm.models.get_pretrained_cfg(spec.timm_name)
        return found, (default.tag if default is not None and default.tag else "")

    def here(self, spec, tag):
        return local_timm_file(spec.timm_name, tag) or _hf_cached(spec.timm_name, tag)

    def looked_up(self, spec, tag):
        return f"{timm_folder(spec.timm_name, tag)} or the Hugging Face cache"

    def location(self, spec, tag):
        from huggingface_hub.constants import HF_HUB_CACHE

        return f"{self.looked_up(spec, tag)} ({HF_HUB_CACHE}, set HF_HOME)"

    def reference_state(self, spec, tag):
        import timm

        # on the CPU: some timm models read tensor values while they are built
        return timm.create_model(f"{spec.timm_name}.{tag}", pretrained=False).state_dict()

    def place_for(self, spec, tag, filename):
        destination = timm_folder(spec.timm_name, tag) / filename
        shutil.rmtree(destination.parent, ignore_errors=True)  # one file per variant
        return destination
