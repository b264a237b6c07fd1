"""Pretrained weights: which variants a model has, where each is looked up on this machine,
and how a local file is put there (checked first), so an offline machine or cluster can be
seeded by hand.

Where a model's weights live, and how its published files are named, is its adapter's
(trainables/model/families.py): torchvision's in the torch hub cache, timm's in the Hugging
Face cache or this project's local store. This module is the same for every kind.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from trainables.core.errors import UserError
from trainables.model.families import family_of
from trainables.model.zoo import ModelSpec, model_spec

# torchvision publishes NAME-HASH.pth, HASH being the first hex digits of the file's sha256
PUBLISHED_NAME = re.compile(r"^(?P<stem>.+)-(?P<hash>[0-9a-f]{6,})\.(pth|pt)$")


def short_reason(exc: BaseException) -> str:
    """One short line saying why loading failed."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:160]


# ---------------------------------------------------------------- variants and places


def tags(spec: ModelSpec) -> tuple[list[str], str]:
    """The model's weights variants and its default one."""
    return family_of(spec).tags(spec)


def resolve_tag(spec: ModelSpec, tag: str) -> str:
    """The variant ``tag`` names ("" or DEFAULT: the library's default), or UserError."""
    known, default = tags(spec)
    if not tag or tag == "DEFAULT":
        if not default:
            raise weights_unavailable(spec.name, "the library publishes none")
        return default
    if tag not in known:
        shown = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
        raise UserError(
            f"bad value weights={tag!r} for {spec.name}: choose one of {shown} "
            "(python sweeps/weights.py list shows them all)"
        )
    return tag


@dataclass(frozen=True)
class Variant:
    tag: str
    default: bool
    path: Path | None  # where it is on this machine; None: not here
    expected: str  # where it would be looked up


def variants(spec: ModelSpec) -> list[Variant]:
    """Every weights variant of ``spec`` and whether (and where) this machine has it."""
    family = family_of(spec)
    known, default = family.tags(spec)
    return [
        Variant(tag, tag == default, family.here(spec, tag), family.looked_up(spec, tag))
        for tag in known
    ]


def location(spec: ModelSpec, tag: str) -> str:
    """Where the weights ``tag`` of ``spec`` are looked up, for messages."""
    return family_of(spec).location(spec, tag)


def weights_unavailable(name: str, reason: str, tag: str = "") -> UserError:
    """The error for ``pretrained=true`` when the weights cannot be had; it names another
    variant of the model that is on this machine, if one is."""
    spec = model_spec(name)
    if not family_of(spec).has_weights:
        return UserError(f"{name} has no pretrained weights; use `pretrained=false`")
    try:
        wanted = resolve_tag(spec, tag)
        where = location(spec, wanted)
        here = [v.tag for v in variants(spec) if v.path is not None and v.tag != wanted]
    except UserError:
        where, here = "the weights cache", []
    if here:
        return UserError(
            f"pretrained weights for '{name}' could not be loaded ({reason}); "
            f"{here[0]} is on this machine: pass `weights={here[0]}`"
        )
    return UserError(
        f"pretrained weights for '{name}' could not be loaded ({reason}); add a "
        f"file with python sweeps/weights.py add FILE --model {name}, pre-seed "
        f"{where}, or use `pretrained=false`"
    )


# ---------------------------------------------------------------- the hub


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


# ---------------------------------------------------------------- adding a file


def read_state_dict(path: Path) -> dict:
    """A state dict from a .safetensors, .pth, .pt or .bin file, or UserError."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, pickled code: all unusable
        raise UserError(
            f"{path}: not a readable weights file ({short_reason(exc)}); pass the "
            "state dict file as published"
        ) from None
    for key in ("state_dict", "model"):  # training checkpoints wrap it
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"{path}: holds no state dict of tensors; pass the weights file itself")
    return state


def mismatch(expected: dict, given: dict, limit: int = 3) -> list[str]:
    """How the tensors ``given`` differ from an architecture's ``expected`` state dict:
    missing keys, unexpected keys, shape mismatches; empty when they fit exactly."""

    def keys(names) -> str:
        names = sorted(names)
        return ", ".join(names[:limit]) + (
            f", ... ({len(names)} in all)" if len(names) > limit else ""
        )

    problems = []
    missing, unexpected = expected.keys() - given.keys(), given.keys() - expected.keys()
    if missing:
        problems.append(f"missing {keys(missing)}")
    if unexpected:
        problems.append(f"unexpected {keys(unexpected)}")
    shapes = sorted(
        k
        for k in expected.keys() & given.keys()
        if tuple(expected[k].shape) != tuple(given[k].shape)
    )
    if shapes:
        k = shapes[0]
        problems.append(
            f"{len(shapes)} shape mismatch(es), e.g. {k}: file "
            f"{tuple(given[k].shape)}, model {tuple(expected[k].shape)}"
        )
    return problems


def sha256(path: Path) -> str:
    from trainables.core.files import hash_file

    return hash_file(path, "sha256")


@dataclass(frozen=True)
class Added:
    tag: str
    path: Path
    verified: bool  # its sha256 matched the published file name


def add(file: str | os.PathLike, model: str, tag: str = "") -> Added:
    """Check that ``file`` holds weights of ``model`` (strictly: every key, every shape) and
    put it where trials look for variant ``tag`` (from a published file name, else the
    library's default). A file named as torchvision publishes it must match its sha256."""
    path = Path(file).expanduser()
    spec = model_spec(model)
    family = family_of(spec)
    if not family.has_weights:
        raise UserError(
            f"{model} has no pretrained weights to add; it always starts from random initialisation"
        )
    if not path.is_file():
        what = (
            "a folder"
            if path.is_dir()
            else "not a regular file"
            if path.exists()
            else "no such file"
        )
        raise UserError(f"{path}: {what}; pass the weights file to add")
    published = family.published_tag(spec, path.name)
    if published and tag and tag != "DEFAULT" and tag != published:
        raise UserError(
            f"{path.name} is {model}'s published {published} file, not {tag}; "
            f"drop --weights or pass --weights {published}"
        )
    match = PUBLISHED_NAME.match(path.name)
    if family.publishes_names and match and not published:
        raise UserError(
            f"{path.name} is not a file torchvision publishes for {model} (its "
            f"variants: {', '.join(tags(spec)[0])}); pass the right model, or "
            "rename a file of your own"
        )
    tag = published or resolve_tag(spec, tag)
    verified = False
    if published:
        digest = sha256(path)
        if not digest.startswith(match.group("hash")):
            raise UserError(
                f"{path}: its sha256 starts {digest[: len(match.group('hash'))]}, "
                f"its name promises {match.group('hash')}; the file is damaged or "
                "not the published one"
            )
        verified = True
    problems = mismatch(family.reference_state(spec, tag), read_state_dict(path))
    if problems:
        raise UserError(f"{path} does not fit {model} ({tag}): " + "; ".join(problems))
    destination = family.place_for(spec, tag, path.name)
    destination.parent.mkdir(parents=True, exist_ok=True)
    from trainables.core.files import replaced

    with replaced(destination) as tmp:
        shutil.copyfile(path, tmp)
    return Added(tag, destination, verified)
