"""The Ray Tune trainable: ``build_trial`` -> ``fit`` -> ``tune.report`` once per epoch, with a
checkpoint from which a restarted trial resumes where it stopped. Only wiring lives here;
everything a trial is comes from ``trainables/trial/build.py``.
"""

from __future__ import annotations

import gc
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from trainables.core import metrics as M
from trainables.core.config import TrialConfig
from trainables.core.faults import NO_FAULTS, TrialFaults
from trainables.core.log import show_lines
from trainables.data import DataHandle
from trainables.model.costs import model_costs
from trainables.model.record import variant_name
from trainables.trial import checkpoint

# Tune hands a finished trial's worker to the next trial once the finished trial's thread
# has ended, and waits TUNE_FUNCTION_THREAD_TIMEOUT_S for that (2 s by default): too short
# for a trial's final clean-up on a loaded machine, and the reuse fails, and the next trial
# with it. Tune reads it in the worker when the worker is handed on; every worker imports
# this module, on any node (a cluster's workers do not inherit the driver's environment).
os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")


def train_trial(
    config: dict,
    data: DataHandle,
    unavailable_weights: tuple[str, ...] = (),
    variant_keys: tuple[str, ...] = (),
    stop_points: tuple[int, ...] = (),
    faults: TrialFaults = NO_FAULTS,
) -> None:
    """Ray Tune function trainable. ``data``, ``unavailable_weights`` (models whose weights
    the driver could not find), ``variant_keys``, ``stop_points`` (the epochs at which
    the scheduler may stop a trial) and the tests' ``faults`` (none by default) come
    through ``tune.with_parameters``; ``config`` is this trial's point in the search
    space."""
    import ray
    from ray import tune

    # here, not at the top: the driver imports this module to hand Tune the function, and
    # the trial's data path would bring torchvision into it
    from trainables.trial.build import build_trial

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "checkpoint saved" per epoch
    show_lines()  # the library's lines (where the images live, the feature cache's progress)
    cfg = TrialConfig.from_dict(config)
    resources = tune.get_context().get_trial_resources().required_resources
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pin_compute(cfg, int(resources.get("CPU", 1)), device)
    faults.at_start(cfg.seed)
    trial = build_trial(
        cfg,
        data,
        variant_name(config, variant_keys),
        offline_weights=cfg.model in unavailable_weights,
    )
    resume = None
    saved = tune.get_checkpoint()
    if saved is not None:
        with saved.as_directory() as directory:
            final = checkpoint.final_metrics(Path(directory))
            if final is not None:  # it had ended: its driver died before it heard so
                tune.report(final)  # its last checkpoint stays the one restored
                return
            resume = checkpoint.load(Path(directory))
    record = trial.record
    extra = {
        M.PRETRAINED: int(record.model.pretrained),
        M.WEIGHTS: record.model.weights,
        M.NODE: ray.get_runtime_context().get_node_id()[:8],
        **model_costs(trial.net, record.preprocess.image_size),
    }

    policy = checkpoint.CheckpointPolicy(cfg.checkpoint_budget, stop_points)

    def report(metrics: dict, state: dict) -> None:
        stopping = bool(metrics[M.STOP_REASON])
        if not policy.due(metrics[M.EPOCH], metrics[M.EPOCH_TIME], stopping, state):
            tune.report({**metrics, **extra})
        else:
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as directory:
                checkpoint.save(
                    Path(directory), state, record, final={**metrics, **extra} if stopping else None
                )
                tune.report(
                    {**metrics, **extra}, checkpoint=tune.Checkpoint.from_directory(directory)
                )
            policy.saved(time.perf_counter() - started)

    try:
        report = faults.around(report, first_attempt=resume is None)
        trial.fit(device, report, resume=resume, gpu_fraction=resources.get("GPU", 1.0) or 1.0)
    finally:
        # Free the model before the next trial reuses this worker (ASHA stops land here too).
        del trial
        collect_garbage()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def collect_garbage() -> None:
    """A full collection of what a trial left in reference cycles, so that its model and
    data are gone before the next trial on this worker starts. The first one also freezes
    what survives it (``gc.freeze``: the worker's modules, torch's, Ray's, half a million
    objects that live as long as the process), which the collector then never walks again:
    a full collection of them took 0.2-0.3 s of every trial (benchmarks/README.md,
    section 3), and so did each of Python's own full collections during the trials. What
    the first trial left alive then and drops later in a cycle (Ray's and Tune's objects
    of that trial, at most) stays; what any trial makes afterwards is collected as
    before."""
    gc.collect()
    if not gc.get_freeze_count():
        gc.freeze()


def pin_compute(cfg: TrialConfig, cpus: int, device: torch.device) -> None:
    """The trial's numbers must not depend on its CPU share or on the trials beside it:
    ``cfg.threads`` compute threads (the driver pinned it; 0 only outside a sweep, then the
    trial's CPUs). Set on every trial, since a reused Ray actor carries over the previous
    trial's setting. ``deterministic`` turns on torch's deterministic algorithms too."""
    torch.set_num_threads(cfg.threads or max(1, cpus))
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's requirement
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = device.type == "cuda"
