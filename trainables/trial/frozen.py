"""Frozen work done once: the outputs of a frozen backbone, computed once per image and
view, shared by every epoch of every trial that freezes the same backbone.

A trial qualifies when its whole backbone is frozen (and in eval mode) for some leading
epochs (``strategy.frozen_epochs``: all of a ``feature_extractor`` or ``linear_probe`` trial,
the first phase of ``gradual_unfreeze``) and its training images come in a finite set of
views (``AugmentSpec.cached_views``: a centre crop, then nothing, the flip or the dihedral
views). Its head then trains on the backbone's outputs read from one memory-mapped file
beside the decode cache, instead of running the backbone on every batch. The views are
drawn exactly as the image path draws them, so a cached trial reports the same per-epoch
losses as the same trial without the cache (to float rounding: tests/test_frozen.py).

The file is keyed by what its contents depend on: the backbone's weights and buffers
themselves, the decoded images (the decode cache's key), the rows, the preprocessing and
the views. It is written beside and renamed into place, built by one process while the
others wait on a lock, checked against its recorded sha256 before use (a truncated or
altered file is computed again, never read), and skipped with one line, for the image path,
when its folder cannot hold it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from torch import nn
from torch.utils.data import BatchSampler, Sampler

from trainables.core.config import TrialConfig
from trainables.core.errors import UserError
from trainables.core.files import hash_file, replaced, writes_into
from trainables.data.batch_augment import Normalize, centre_crop, draw_views
from trainables.data.batches import lone_last, nchw
from trainables.data.decode import claim_blocks
from trainables.data.transforms import dihedral_view
from trainables.model.cut import Cut, cut_at, split_body
from trainables.model.factory import Net
from trainables.model.nets import Tapped, evaluating
from trainables.recipe.augment import TTA_VIEWS, augment_spec
from trainables.recipe.strategies import frozen_prefix
from trainables.trial.scores import split_scores

log = logging.getLogger(__name__)

CACHE_VERSION = 1
# room left free beside a new cache file, so that building it never fills the disk
HEADROOM_BYTES = 256 << 20
# the most a frozen prefix's outputs (maps, larger than pooled features) may take on disk
PREFIX_MAX_BYTES = 4 << 30
# a full-batch fit whose epoch moved the training loss by less than this (relative) is done
CONVERGED = 1e-6
_VERIFIED: dict[tuple, bool] = {}  # (path, size, mtime) -> checked in this process


@dataclass
class FrozenFeatures:
    """The frozen backbone's output for every row and view: ``values`` is N x V x D float32
    (the memory map, as a tensor, or its copy on the training device); ``views[j]`` is the
    dihedral view of column j."""

    values: torch.Tensor
    views: tuple[int, ...]
    path: Path | None = None
    # what each of D is, for a frozen prefix's outputs: the shapes (C x H x W of a map) of
    # the values it joins (empty for the pooled features a head reads)
    shapes: tuple[tuple[int, ...], ...] = ()

    def columns(self, views: torch.Tensor) -> torch.Tensor:
        lookup = torch.full((max(self.views) + 1,), -1, dtype=torch.long)
        lookup[list(self.views)] = torch.arange(len(self.views))
        return lookup[views]

    def column(self, view: int) -> int:
        return self.views.index(view)


def views_needed(cfg: TrialConfig) -> tuple[int, ...] | None:
    """The views a trial reads (training's and evaluation's), or None if the trial's
    augmentation cannot be served from the cache or the cache is switched off."""
    if cfg.frozen_cache == "off":
        return None
    train = augment_spec(cfg.augment).cached_views(cfg.random_erasing)
    if train is None:
        return None
    return tuple(sorted({*train, *TTA_VIEWS[cfg.tta]}))


class HeadOnly(nn.Module):
    """The main classifier head of a ``Net`` as a model of the frozen backbone's outputs,
    with the ``(logits, aux_logits)`` interface of the loop. Its parameters are the
    ``Net``'s own, so training it trains the ``Net``."""

    def __init__(self, net: Net):
        super().__init__()
        self.head = net.get_submodule(net.head_prefixes[0])

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, list]:
        return self.head(features), []


class Suffix(nn.Module):
    """What follows a frozen prefix (``cut.Cut``) in a ``Net``, its heads included, as a
    model of the prefix's cached outputs (the values of ``shapes``, flattened and joined),
    with the loop's ``(logits, aux_logits)`` interface. Its modules are the ``Net``'s own."""

    def __init__(self, cut: Cut, shapes: tuple[tuple[int, ...], ...]):
        super().__init__()
        self.suffix, self.shapes = cut.suffix, tuple(tuple(s) for s in shapes)
        self.widths = [math.prod(s) for s in self.shapes]

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, list]:
        n = len(features)
        parts = features.split(self.widths, dim=1)
        return self.suffix(*(p.reshape(n, *s) for p, s in zip(parts, self.shapes))), []


def prefix_cut(net: Net, fraction: float, example: torch.Tensor) -> Cut | None:
    """``net``'s body cut where the first ``fraction`` of its blocks ends (``split_body``,
    checked on ``example``, a batch of its inputs), or None where it cannot be cut there
    (the trial then runs the whole network)."""
    frozen = {n.removeprefix("body.") for n in frozen_prefix(net, fraction)}
    return split_body(net.body, frozen, example)


@contextlib.contextmanager
def headless(net: Net) -> Iterator[nn.Module]:
    """``net.body`` with its main head replaced by the identity: it outputs what the head
    reads. The head is put back however the block ends."""
    parent_name, _, name = net.head_prefixes[0].rpartition(".")
    parent = net.get_submodule(parent_name)
    head = getattr(parent, name)
    setattr(parent, name, nn.Identity())
    try:
        yield net.body
    finally:
        setattr(parent, name, head)


def cache_key(
    net: Net, data, views: tuple[int, ...], rows: np.ndarray, cut: Cut | None = None
) -> str:
    """What the features depend on: the backbone's weights and buffers (not the head's;
    with ``cut``, the frozen prefix's only, and where it ends), the decoded images, which
    rows, the crop and normalisation, the views, and which of the backbone's blocks the
    head reads."""
    pre = data.preprocess
    digest = hashlib.sha256()
    key = {
        "version": CACHE_VERSION,
        "images": data.images_key,
        "shape": list(data.images.shape),
        "image_size": pre.image_size,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "views": list(views),
    }
    # what the head reads (taps=stages, pyramid, expanded): the same weights, other features
    taps = [
        [name, list(m.taps)]
        + ([list(m.scales)] if m.scales != (1,) else [])
        + ([sorted(m.inner)] if m.inner else [])  # read at their expanded maps
        for name, m in net.named_modules()
        if isinstance(m, Tapped)
    ]
    if taps:
        key["taps"] = taps
    if cut is not None:
        key["cut"] = [cut.at, cut.index]
    digest.update(json.dumps(key).encode())
    digest.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    state = cut.prefix.state_dict() if cut is not None else net.state_dict()
    for name, tensor in sorted(state.items()):
        if cut is not None or not net.is_head(name):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:32]


def frozen_features(
    net: Net,
    data,
    views: tuple[int, ...],
    device: torch.device,
    batch_size: int = 64,
    progress: bool = True,
    cut: Cut | None = None,
) -> FrozenFeatures | None:
    """The cached outputs of ``net``'s frozen backbone (with ``cut``: of its frozen prefix)
    for every row of ``data`` (a ``loop.TrialData``) in each of ``views``, computed here on
    ``device`` if no valid cache file has them. None, after one line on stderr, when the
    cache folder cannot hold them (full, read-only): the trial then trains on images, slower
    but the same."""
    if not data.cache_dir:
        return None
    folder = Path(data.cache_dir) / "features"
    rows = np.unique(np.concatenate([data.train_rows, data.val.rows, data.test.rows]))
    key = cache_key(net, data, views, rows, cut)
    npy, meta = folder / f"{key}.npy", folder / f"{key}.json"
    try:
        with writes_into(folder, "frozen-feature cache"):
            if folder.exists() and not folder.is_dir():  # a file in the way
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
            folder.mkdir(parents=True, exist_ok=True)
            with FileLock(str(folder / f"{key}.lock")):
                problem = check_cache(npy, meta)
                if problem:
                    if problem != "absent":
                        log.warning(
                            f"frozen-feature cache {npy.name}: {problem}; computing it again"
                        )
                    _build(net, data, views, rows, device, batch_size, npy, meta, progress, cut)
    except UserError as exc:
        log.warning(f"frozen features not cached ({exc}); training on the images instead")
        return None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        values = torch.from_numpy(np.load(npy, mmap_mode="r"))
    if device.type != "cpu" and (
        device.type != "cuda" or values.nbytes < torch.cuda.mem_get_info(device)[0] // 4
    ):  # else (a frozen prefix's maps, too many for the GPU) read from the memory map
        values = values.to(device)
    shapes = tuple(tuple(s) for s in json.loads(meta.read_text()).get("shapes", ()))
    return FrozenFeatures(values, views, npy, shapes)


def check_cache(npy: Path, meta: Path) -> str:
    """ "" when the cache file is whole and unaltered, else what is wrong with it."""
    if not npy.exists() or not meta.exists():
        return "absent"
    try:
        record = json.loads(meta.read_text())
        stat = npy.stat()
        if stat.st_size != record["bytes"]:
            return f"{stat.st_size} bytes where {record['bytes']} were written (truncated)"
        mark = (str(npy), stat.st_size, stat.st_mtime_ns)
        if mark not in _VERIFIED:
            if hash_file(npy, "sha256") != record["sha256"]:
                return "its contents differ from what was written (altered or damaged)"
            _VERIFIED[mark] = True
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"its record is unreadable ({type(exc).__name__})"
    return ""


@torch.inference_mode()
def _build(
    net, data, views, rows, device, batch_size, npy: Path, meta: Path, progress, cut=None
) -> None:
    pre = data.preprocess
    normalize = Normalize(pre.mean, pre.std)
    images = nchw(data.images)
    net.to(device)
    started = time.monotonic()
    what = "frozen backbone's" if cut is None else f"frozen blocks' (up to {cut.at})"
    body_of = contextlib.nullcontext(cut.prefix) if cut is not None else headless(net)
    with evaluating(net), body_of as body:

        def outputs(part: np.ndarray, view: int) -> tuple[torch.Tensor, ...]:
            x = centre_crop(images[torch.as_tensor(part)], pre.image_size).contiguous()
            out = body(normalize(dihedral_view(x.to(device), view)))
            return tuple(out) if cut is not None else (out,)

        def run(part: np.ndarray, view: int) -> torch.Tensor:
            return torch.cat([v.float().reshape(len(part), -1) for v in outputs(part, view)], 1)

        shapes = [tuple(v.shape[1:]) for v in outputs(rows[:1], 0)]
        width = sum(math.prod(s) for s in shapes)
        need = data.images.shape[0] * len(views) * width * 4
        if cut is not None and need > PREFIX_MAX_BYTES:
            raise UserError(
                f"the outputs of the frozen blocks up to {cut.at} would take "
                f"{need / 1e9:.1f} GB (at most {PREFIX_MAX_BYTES / 1e9:.1f}): a larger "
                "frozen_fraction or a smaller image_size makes them fit"
            )
        free = shutil.disk_usage(npy.parent).free
        if need + HEADROOM_BYTES > free:
            raise UserError(
                f"{npy.parent} has {free / 1e6:.0f} MB free and the features need "
                f"{need / 1e6:.0f} MB; free some space there or set VISIONSWEEP_CACHE"
            )
        if progress:
            log.info(
                f"computing the {what} outputs for {len(rows)} images x "
                f"{len(views)} view(s) at {pre.image_size} px (once; cached for later "
                "trials)"
            )
        with replaced(npy, suffix=".npy") as tmp:
            out = np.lib.format.open_memmap(
                tmp,
                mode="w+",
                dtype=np.float32,
                shape=(data.images.shape[0], len(views), width),
            )
            # its blocks claimed now: a memory-mapped write past a full disk's end would
            # be a SIGBUS; a refused claim is an OSError (the one line above)
            claim_blocks(tmp)
            step = max(1, len(rows) // 10)
            for start in range(0, len(rows), batch_size):
                part = rows[start : start + batch_size]
                for column, view in enumerate(views):
                    out[part, column] = run(part, view).cpu().numpy()
                done = min(start + batch_size, len(rows))
                if progress and (done // step > start // step or done == len(rows)):
                    rate = done / max(time.monotonic() - started, 1e-9)
                    log.info(f"frozen features {done}/{len(rows)} ({rate:.1f} images/s)")
            out.flush()
            del out
        record = {
            "bytes": npy.stat().st_size,
            "sha256": hash_file(npy, "sha256"),
            "views": list(views),
            "width": width,
            "shapes": [list(s) for s in shapes] if cut is not None else [],
            "rows": len(rows),
            "seconds": time.monotonic() - started,
        }
        try:
            with replaced(meta) as tmp:
                tmp.write_text(json.dumps(record))
        except BaseException:
            npy.unlink(missing_ok=True)  # no features without their record
            raise


class FeatureBatches:
    """Training batches of cached features: the same batches of the same sampler as the
    image path, each image in the view the image path would have drawn for it."""

    def __init__(
        self,
        features: FrozenFeatures,
        rows: np.ndarray,
        labels: np.ndarray,
        sampler: Sampler,
        batch_size: int,
        cfg: TrialConfig,
    ):
        device = features.values.device
        self.features = features
        self.rows = torch.as_tensor(rows, dtype=torch.long, device=device)
        self.labels = torch.as_tensor(labels, dtype=torch.long, device=device)
        self.batches = BatchSampler(sampler, batch_size, drop_last=lone_last(sampler, batch_size))
        self.spec = augment_spec(cfg.augment)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device = self.rows.device
        for batch in self.batches:
            index = torch.as_tensor(batch, dtype=torch.long).to(device)
            views = draw_views(self.spec, len(batch))
            column = (
                torch.zeros(len(batch), dtype=torch.long)
                if views is None
                else self.features.columns(views)
            )
            yield (
                self.features.values[self.rows[index], column.to(device)],
                self.labels[index],
            )

    def every_view(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every training image in every view it can be drawn in: the whole training set of
        a full-batch fit (``linear_probe``)."""
        spec_views = self.spec.cached_views() or (0,)
        columns = [self.features.column(v) for v in spec_views]
        x = self.features.values[self.rows][:, columns]
        return x.reshape(-1, x.shape[-1]), self.labels.repeat_interleave(len(columns))


@torch.inference_mode()
def evaluate_features(
    head: HeadOnly,
    features: FrozenFeatures,
    split,
    batch_size: int,
    view: int = 0,
) -> tuple[float, float, np.ndarray]:
    """``loop.evaluate`` on the cached features of ``split``'s rows (``view``: of their
    images in that dihedral view)."""
    head.eval()
    column = features.column(view)
    rows = split.rows.to(features.values.device)
    device = next(head.parameters()).device
    outputs = []
    for start in range(0, len(split.y), batch_size):
        batch = features.values[rows[start : start + batch_size], column]
        logits, _ = head(batch.to(device, non_blocking=True))
        outputs.append(logits.float().cpu())
    return split_scores(torch.cat(outputs), split.y)


class FrozenPhase:
    """The leading epochs of a trial whose head trains on cached features (or every epoch
    of one whose first blocks stay frozen, ``frozen_fraction``, which trains the rest on
    their cached outputs): the trained part as a model, its training batches, and its
    evaluation. ``start`` returns None where the trial does not qualify (the loop then runs
    the whole network on every batch, as ever)."""

    def __init__(
        self,
        features: FrozenFeatures,
        head: HeadOnly | Suffix,
        loader: FeatureBatches,
        until: int,
        weight_decay: float,
        probe_until: int = 0,
        probe_iterations: int = 0,
        cut: Cut | None = None,
    ):
        self.features, self.head, self.loader = features, head, loader
        self.cut = cut  # the cache holds the outputs of this frozen prefix (None: a backbone's)
        self.until, self.weight_decay = until, weight_decay
        self.probe_until = probe_until
        self._probe = (
            torch.optim.LBFGS(
                head.parameters(), lr=1.0, max_iter=probe_iterations, line_search_fn="strong_wolfe"
            )
            if probe_until
            else None
        )
        self._everything: tuple[torch.Tensor, ...] | None = None
        self._last_loss = float("nan")
        self.converged = False  # a full-batch epoch that no longer moved the loss

    @classmethod
    def start(
        cls,
        cfg: TrialConfig,
        net: Net,
        strategy,
        data,
        device: torch.device,
        sampler: Sampler,
        epoch: int,
    ) -> FrozenPhase | None:
        until = strategy.frozen_epochs
        views = views_needed(cfg)
        if views is None:
            return None
        if epoch >= until:  # the backbone trains from here, all but a frozen prefix if any
            if cfg.frozen_fraction and not strategy.aux_weight:
                return cls._prefix(cfg, net, data, device, sampler, views)
            return None
        features = frozen_features(net, data, views, device, batch_size=max(cfg.batch_size, 64))
        if features is None:
            if strategy.probe_epochs:
                raise UserError(
                    f"strategy={cfg.strategy} needs the frozen-feature cache, which could not be "
                    "written (see above): free space in the cache folder or set VISIONSWEEP_CACHE"
                )
            return None
        loader = FeatureBatches(
            features, data.train_rows, data.train_labels, sampler, cfg.batch_size, cfg
        )
        return cls(
            features,
            HeadOnly(net),
            loader,
            until,
            cfg.weight_decay,
            strategy.probe_epochs,
            strategy.probe_iterations,
        )

    @classmethod
    def _prefix(cls, cfg, net, data, device, sampler, views) -> FrozenPhase | None:
        """Every epoch of a trial whose first blocks (``frozen_fraction``) never train: the
        rest of the network trains on their cached outputs, where it can be cut there."""
        pre = data.preprocess
        sample = centre_crop(nchw(data.images[:2]), pre.image_size).contiguous().to(device)
        cut = prefix_cut(net, cfg.frozen_fraction, Normalize(pre.mean, pre.std)(sample))
        if cut is None:
            return None
        features = frozen_features(
            net, data, views, device, batch_size=max(cfg.batch_size, 64), cut=cut
        )
        if features is None:
            return None
        loader = FeatureBatches(
            features, data.train_rows, data.train_labels, sampler, cfg.batch_size, cfg
        )
        return cls(
            features,
            Suffix(cut, features.shapes),
            loader,
            cfg.max_epochs,
            cfg.weight_decay,
            cut=cut,
        )

    def model_of(self, net: Net) -> HeadOnly | Suffix:
        """What this phase trains, taken from ``net`` (the weights' moving average, which
        the loop scores): its head, or its blocks after the same cut."""
        if self.cut is None:
            return HeadOnly(net)
        return Suffix(cut_at(net.body, self.cut.index), self.features.shapes)

    def probing(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) is a full-batch L-BFGS fit of the head."""
        return epoch < self.probe_until

    @property
    def where(self) -> str:
        return f"cached in {self.features.path.name}" if self.features.path else "in memory"

    def covers(self, epochs: int) -> bool:
        """Whether the first ``epochs`` epochs all train on the cache."""
        return epochs <= self.until

    def evaluate(self, split, batch_size: int, view: int = 0, head: HeadOnly | None = None):
        """Score ``split`` on the cached features, by ``head`` (default: the trained one; the
        loop passes the weights' moving average's when it scores that)."""
        return evaluate_features(head or self.head, self.features, split, batch_size, view)

    def fit_full_batch(self, criterion) -> tuple[float, float]:
        """One L-BFGS step (many iterations) on every training image in every view; returns
        the loss (without the L2 penalty) and accuracy after it."""
        optimizer = self._probe
        if self._everything is None:  # on the head's device (the features may be on the host)
            device = next(self.head.parameters()).device
            self._everything = tuple(t.to(device) for t in self.loader.every_view())
        x, y = self._everything
        weights = [p for p in self.head.parameters() if p.dim() > 1]

        def closure() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(self.head(x)[0], y)
            if self.weight_decay:
                loss = loss + 0.5 * self.weight_decay * sum((w * w).sum() for w in weights)
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            logits = self.head(x)[0]
            loss = float(criterion(logits, y))
            acc = float((logits.argmax(1) == y).float().mean())
        self.converged = abs(loss - self._last_loss) <= CONVERGED * max(1.0, abs(loss))
        self._last_loss = loss
        return loss, acc
