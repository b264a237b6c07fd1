"""The one training loop. Every trainable calls ``fit``; it never branches on model family.

Per epoch: strategy hook, one pass over the training data, validation (plain cross-entropy,
so trials with different training losses compare fairly), schedule step, early stopping,
and one ``report(metrics, state)`` call. Whenever validation loss improves, the best
weights are kept and scored on the test split, and their softmax outputs are kept for
ensembles, so every trial, however it stops, carries the scores of its best checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import RandomSampler, WeightedRandomSampler

from trainables.core import metrics as M
from trainables.core.config import TrialConfig
from trainables.data.batches import (
    Normalize,
    Placement,
    centre_crop,
    image_placement,
    training_batches,
)
from trainables.data.transforms import dihedral_view
from trainables.model.factory import Net
from trainables.model.record import Preprocess
from trainables.recipe.augment import TTA_VIEWS
from trainables.recipe.losses import create_loss, grade_ranks
from trainables.recipe.optim import create_schedule
from trainables.recipe.strategies import Strategy
from trainables.stats.calibration import calibrate
from trainables.stats.evaluation import accuracy, macro_f1, test_summary
from trainables.trial.frozen import FrozenPhase
from trainables.trial.scores import split_scores

log = logging.getLogger(__name__)


@dataclass
class EvalSplit:
    """An evaluation split as a view: the images it is drawn from (uint8 N x 3 x H x W: the
    memory-mapped decoded images, or their copy on the training device), the rows of them
    it holds (all of them when None), the centre crop it is scored at (none when 0), its
    labels and sample ids. Batches are gathered and cropped one at a time, so no split is
    ever copied whole."""

    x: torch.Tensor
    y: torch.Tensor
    ids: np.ndarray  # the images' paths as split.csv writes them: what ensembles align on
    rows: torch.Tensor | None = None
    size: int = 0

    def batch(self, start: int, end: int) -> torch.Tensor:
        """uint8 images start..end of the split, centre-cropped, contiguous."""
        x = (
            self.x[start:end]
            if self.rows is None
            else self.x.index_select(0, self.rows[start:end].to(self.x.device))
        )
        return (centre_crop(x, self.size) if self.size else x).contiguous()

    def drawn_from(self, images: torch.Tensor) -> EvalSplit:
        """The same split, gathered from ``images`` (a copy of its source elsewhere)."""
        return dataclasses.replace(self, x=images)


@dataclass
class TrialData:
    images: np.ndarray  # every decoded image, N x H x W x 3 uint8 (a memory map)
    train_rows: np.ndarray  # rows of ``images`` in the training split
    train_labels: np.ndarray
    val: EvalSplit
    test: EvalSplit
    num_classes: int
    preprocess: Preprocess
    # where the frozen-feature cache lives ("": no cache) and the decoded images' key
    cache_dir: str = ""
    images_key: str = ""
    class_names: tuple[str, ...] = ()

    @property
    def class_counts(self) -> list[int]:
        return np.bincount(self.train_labels, minlength=self.num_classes).tolist()


@dataclass
class FitState:
    """Loop state that a checkpoint carries besides model/optimizer/schedule."""

    epoch: int = 0  # epochs completed
    bad_epochs: int = 0
    best: dict = field(
        default_factory=lambda: {
            M.BEST_EPOCH: 0,
            M.BEST_VAL_LOSS: math.nan,
            M.BEST_VAL_ACC: math.nan,
            M.TEST_ACC: math.nan,
            M.TEST_MACRO_F1: math.nan,
            **{key: math.nan for key in M.TEST_INTERVALS},
        }
    )
    best_weights: dict | None = None
    predictions: dict | None = None  # val/test probabilities, labels, ids of the best weights


Report = Callable[[dict, dict], None]


def amp_dtype(cfg: TrialConfig, device: torch.device) -> torch.dtype | None:
    if not cfg.amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def train_one_epoch(
    net,
    loader,
    criterion,
    optimizer,
    scaler,
    device: torch.device,
    aux_weight: float,
    dtype,
    check_every: int = 50,
    after_step: Callable[[], None] | None = None,
    clip_grad: float = 0.0,
) -> tuple[float, float]:
    """One pass over ``loader``. Returns (mean loss, accuracy); the loss is NaN if it diverged.

    Loss and accuracy add up on the device; the host waits for it only every
    ``check_every`` steps (to stop a diverged epoch early) and at the end, so a GPU is never
    left idle between steps while the host reads a number. ``after_step`` runs after each
    optimizer step (the weights' moving average); ``clip_grad`` > 0 clips the gradient's
    norm over all parameters to it before each step."""
    if clip_grad:
        from timm.utils import dispatch_clip_grad  # timm's import (0.5 s): only when used
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for step, (x, y) in enumerate(loader, 1):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits, aux = net(x)
            loss = criterion(logits, y)
            if aux_weight:
                loss = loss + aux_weight * sum(criterion(a, y) for a in aux)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clip_grad:
            scaler.unscale_(optimizer)  # clip the true gradient, not the scaled one
            dispatch_clip_grad([p for g in optimizer.param_groups for p in g["params"]], clip_grad)
        scaler.step(optimizer)
        scaler.update()
        if after_step is not None:
            after_step()
        total_loss += loss.detach().float() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        if step % check_every == 0 and not torch.isfinite(total_loss):
            break
    acc = correct.item() / max(seen, 1)
    mean_loss = total_loss.item() / max(seen, 1)
    return (mean_loss if math.isfinite(mean_loss) else math.nan), acc


@torch.inference_mode()
def evaluate(
    net,
    split: EvalSplit,
    normalize: Normalize,
    batch_size: int,
    device: torch.device,
    dtype=None,
    channels_last: bool = False,
    view: int = 0,
) -> tuple[float, float, np.ndarray]:
    """Mean cross-entropy, accuracy and softmax probabilities on a centre-cropped split
    (``view``: of its images in that dihedral view, ``batch_augment.dihedral_view``).
    ``net`` is the model or its compiled form; it is put in eval mode here."""
    getattr(net, "_orig_mod", net).eval()
    outputs = []
    for start in range(0, len(split.y), batch_size):
        x = normalize(split.batch(start, start + batch_size).to(device, non_blocking=True))
        if view:
            x = dihedral_view(x, view)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits, _ = net(x)
        outputs.append(logits.float().cpu())
    return split_scores(torch.cat(outputs), split.y)


def fit(
    cfg: TrialConfig,
    net: Net,
    strategy: Strategy,
    data: TrialData,
    device: torch.device,
    report: Report,
    resume: dict | None = None,
    gpu_fraction: float = 1.0,
) -> dict:
    """Train ``net`` under ``cfg``; call ``report(metrics, state)`` once per epoch.

    ``state`` holds everything needed to resume (pass it back as ``resume``). Returns the
    last metrics reported; their ``stop_reason`` says why training ended.
    ``gpu_fraction``: the share of the GPU this trial has (its image budget scales with it).
    """
    net.to(device)
    fast = device.type == "cuda" and cfg.channels_last
    if fast:
        net.to(memory_format=torch.channels_last)
    criterion = create_loss(cfg, data.class_counts, data.class_names).to(device)
    optimizer = strategy.create_optimizer(net)
    schedule = create_schedule(cfg, optimizer)
    dtype = amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    generator = torch.Generator().manual_seed(cfg.seed)
    state = FitState()
    if resume:
        net.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        generator.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])  # augmentation draws from the global RNG
        state = resume["fit"]
    # the weights' moving average: what is validated, scored, kept as best and exported
    ema = None
    if cfg.ema_decay:
        from timm.utils import ModelEmaV3  # timm's import (0.5 s): only when used

        ema = ModelEmaV3(net, decay=cfg.ema_decay)
    if ema is not None and resume and "ema" in resume:
        ema.load_state_dict(resume["ema"])
    scored = net if ema is None else ema.module
    sampler = train_sampler(cfg, data, generator)

    def frozen_phase(epoch: int):
        """The cached phase from ``epoch`` on (None: none), and the model it scores where
        the weights' moving average is what is scored (None: the trained one)."""
        phase = FrozenPhase.start(cfg, net, strategy, data, device, sampler, epoch)
        return phase, (phase.model_of(scored) if phase is not None and ema is not None else None)

    cache, scored_head = frozen_phase(state.epoch)
    if cache is not None and cache.covers(cfg.max_epochs):  # the images are never read
        frozen = "blocks'" if cache.cut is not None else "backbone's"
        placement = Placement("features", f"the frozen {frozen} outputs, {cache.where}")
        loader = None
    else:
        placement = image_placement(cfg, data.images, device, gpu_fraction)
        loader = training_batches(cfg, data, sampler, device, placement)
    # every trial's images_on column says where; a line only for the slower host path,
    # which a larger image_budget_mb avoids (a line per trial of the usual case was noise)
    log.log(
        logging.INFO if placement.where == "host" else logging.DEBUG,
        f"images: {placement.where} ({placement.reason})",
    )
    if placement.resident is not None:  # evaluation gathers from the device copy too
        data = dataclasses.replace(
            data,
            val=data.val.drawn_from(placement.resident),
            test=data.test.drawn_from(placement.resident),
        )
    normalize = Normalize(data.preprocess.mean, data.preprocess.std)
    model = torch.compile(net) if cfg.compile else net
    evaluated = model if ema is None else scored
    epoch = state.epoch
    after_step = None if ema is None else (lambda: ema.update(net))

    def score(split: EvalSplit, view: int = 0):
        if cache is not None and cache.covers(epoch + 1):
            return cache.evaluate(split, cfg.batch_size, view, scored_head)
        return evaluate(evaluated, split, normalize, cfg.batch_size, device, dtype, fast, view)

    metrics: dict = {}
    for epoch in range(state.epoch, cfg.max_epochs):
        started = time.perf_counter()
        if cache is not None and not cache.covers(epoch + 1):  # a frozen phase has ended:
            # what stays frozen (frozen_fraction) may still be served from a cache
            cache, scored_head = frozen_phase(epoch)
        strategy.on_epoch_start(net, optimizer, epoch)
        strategy.train_mode(net)
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_acc = val_loss, val_acc = math.nan, math.nan
        val_probs, error = None, ""
        on_cache = cache is not None and cache.covers(epoch + 1)
        probing = on_cache and cache.probing(epoch)
        try:
            if probing:
                train_loss, train_acc = cache.fit_full_batch(criterion)
                if ema is not None:  # a probe's fit is a solution, not a noisy step:
                    ema.set(net)  # the average starts from it
            elif on_cache:
                train_loss, train_acc = train_one_epoch(
                    cache.head,
                    cache.loader,
                    criterion,
                    optimizer,
                    scaler,
                    device,
                    0.0,
                    dtype,
                    after_step=after_step,
                    clip_grad=cfg.clip_grad,
                )
            else:
                train_loss, train_acc = train_one_epoch(
                    model,
                    loader,
                    criterion,
                    optimizer,
                    scaler,
                    device,
                    strategy.aux_weight,
                    dtype,
                    after_step=after_step,
                    clip_grad=cfg.clip_grad,
                )
            if not diverged(train_loss, data.num_classes):
                val_loss, val_acc, val_probs = score(data.val)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            error = (
                f"out of memory at batch_size={cfg.batch_size} on {device.type}: use a "
                "smaller batch_size or image_size, or fewer trials per GPU"
            )
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        state.epoch = epoch + 1
        stop = ""
        if error:
            stop = M.OOM
        elif not math.isfinite(val_loss):
            stop = M.DIVERGED
        else:
            _track_best(state, scored, data, val_loss, val_acc, val_probs, cfg, score)
            if epoch < strategy.patience_start:
                state.bad_epochs = 0
            if not probing:  # a probe's fit takes no step of the optimizer: the schedule
                # (its warm-up too) counts the epochs that do, from lp_ft's first fine-tuning
                schedule.step(val_loss)
            if stuck_at_chance(cfg, state, data, strategy.patience_start):
                stop = M.STUCK_AT_CHANCE
            elif cfg.early_stop_patience and state.bad_epochs >= cfg.early_stop_patience:
                stop = M.EARLY_STOPPING
            elif state.epoch >= cfg.max_epochs or (
                on_cache and cache.converged and strategy.probe_epochs >= cfg.max_epochs
            ):  # a probe that no longer moves: nothing is left to train
                stop = M.COMPLETED
        metrics = {
            M.EPOCH: state.epoch,
            M.TRAIN_LOSS: train_loss,
            M.TRAIN_ACC: train_acc,
            M.VAL_LOSS: val_loss,
            M.VAL_ACC: val_acc,
            M.LR: lr,
            M.EPOCH_TIME: time.perf_counter() - started,
            **state.best,
            M.STOP_REASON: stop,
            M.ERROR_MESSAGE: error,
            M.IMAGES_ON: "features" if on_cache else placement.where,
        }
        report(
            metrics,
            {
                "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "fit": state,
                **({"ema": ema.state_dict()} if ema is not None else {}),
            },
        )
        if stop:
            break
    return metrics


DIVERGENCE_FACTOR = 50.0


def diverged(train_loss: float, num_classes: int) -> bool:
    """NaN/Inf, or a loss far beyond what even an untrained model scores (ln K for K
    classes): BatchNorm can keep an exploding loss finite for many epochs."""
    limit = DIVERGENCE_FACTOR * max(1.0, math.log(num_classes))
    return not math.isfinite(train_loss) or train_loss > limit


def chance_level(labels: torch.Tensor, num_classes: int) -> float:
    """Accuracy of always answering the most frequent class (1/num_classes if balanced)."""
    return float(torch.bincount(labels, minlength=num_classes).max()) / max(1, len(labels))


def stuck_at_chance(cfg: TrialConfig, state: FitState, data: TrialData, start: int) -> bool:
    """True once ``chance_epochs`` epochs (counted from ``start``, after any frozen phase)
    have passed without the best validation accuracy leaving chance level."""
    if not cfg.chance_epochs or state.epoch < start + cfg.chance_epochs:
        return False
    chance = chance_level(data.val.y, data.num_classes)
    return state.best[M.BEST_VAL_ACC] <= chance + cfg.chance_margin


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    text = str(exc)
    return (
        isinstance(exc, torch.OutOfMemoryError)
        or "out of memory" in text
        or "can't allocate memory" in text
    )


def train_sampler(cfg: TrialConfig, data: TrialData, generator: torch.Generator):
    """Shuffle, or with ``sampler=balanced`` draw each class equally often."""
    if cfg.sampler == "balanced":
        counts = np.bincount(data.train_labels, minlength=data.num_classes)
        weights = 1.0 / counts[data.train_labels]
        return WeightedRandomSampler(
            torch.as_tensor(weights, dtype=torch.double),
            num_samples=len(weights),
            replacement=True,
            generator=generator,
        )
    return RandomSampler(range(len(data.train_rows)), generator=generator)


def _track_best(
    state: FitState,
    net: Net,
    data: TrialData,
    val_loss: float,
    val_acc: float,
    val_probs: np.ndarray,
    cfg: TrialConfig,
    score,
) -> None:
    """Keep the best weights by validation loss, score them on test, count patience."""
    best_loss = state.best[M.BEST_VAL_LOSS]
    if math.isnan(best_loss) or val_loss < best_loss - cfg.early_stop_min_delta:
        state.bad_epochs = 0
    else:
        state.bad_epochs += 1
    if not (math.isnan(best_loss) or val_loss < best_loss):
        return
    _, _, test_probs = score(data.test)
    test = test_summary(data.test.y.numpy(), test_probs, data.num_classes)
    state.best = {
        M.BEST_EPOCH: state.epoch,
        M.BEST_VAL_LOSS: val_loss,
        M.BEST_VAL_ACC: val_acc,
        M.TEST_ACC: test["acc"],
        M.TEST_ACC_LOW: test["acc_low"],
        M.TEST_ACC_HIGH: test["acc_high"],
        M.TEST_MACRO_F1: test["macro_f1"],
        M.TEST_MACRO_F1_LOW: test["macro_f1_low"],
        M.TEST_MACRO_F1_HIGH: test["macro_f1_high"],
    }
    if cfg.class_order or cfg.loss in ("ordinal", "weighted_ordinal"):
        ranks = np.asarray(
            grade_ranks(cfg.class_order, data.class_names or range(data.num_classes))
        )
        predicted = ranks[test_probs.argmax(1)]
        state.best[M.TEST_GRADE_ERROR] = float(
            np.abs(predicted - ranks[data.test.y.numpy()]).mean()
        )
    views = TTA_VIEWS[cfg.tta]
    viewed = {}
    if len(views) > 1:  # the mean over the views, of validation too (an export calibrates on it)
        for name, split, probs in (("val", data.val, val_probs), ("test", data.test, test_probs)):
            others = [score(split, view)[2] for view in views[1:]]
            viewed[f"{name}_probs_tta"] = (probs + sum(others)) / len(views)
        labels, mean = data.test.y.numpy(), viewed["test_probs_tta"]
        state.best[M.TEST_ACC_TTA] = accuracy(labels, mean.argmax(1))
        state.best[M.TEST_MACRO_F1_TTA] = macro_f1(labels, mean.argmax(1), data.num_classes)
    calibrated = calibrate(  # what an export of the trial gives: its views' mean
        viewed.get("val_probs_tta", val_probs),
        data.val.y.numpy(),
        viewed.get("test_probs_tta", test_probs),
        data.test.y.numpy(),
    )
    state.best.update(
        {
            M.TEMPERATURE: calibrated["temperature"],
            M.TEST_ECE: calibrated["ece"],
            M.TEST_ECE_CALIBRATED: calibrated["ece_calibrated"],
        }
    )
    state.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
    state.predictions = {
        "val_probs": val_probs,
        "val_labels": data.val.y.numpy(),
        "val_ids": data.val.ids,
        "test_probs": test_probs,
        "test_labels": data.test.y.numpy(),
        "test_ids": data.test.ids,
        **viewed,
    }
