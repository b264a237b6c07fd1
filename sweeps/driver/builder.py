"""From a resolved sweep to the Ray Tune ``Tuner`` that runs it (or restores it): the
scheduler, the searcher, the trainable with its data, and the recorder with its sinks."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from search_spaces import is_grid
from sweeps.driver.plan import create_searcher
from sweeps.driver.recorder import NoMetricsOfUnstarted
from sweeps.driver.spec import Sweep
from sweeps.experiment.files import OPTUNA_JOURNAL
from sweeps.experiment.redact import redact
from trainables.core import metrics as M
from trainables.core.errors import UserError
from trainables.core.faults import TrialFaults
from trainables.data import DataHandle


def _name_creator(sweep: Sweep):
    def name(trial) -> str:
        fold = trial.config.get("fold", -1)
        label = (
            f"{sweep.variant(trial.config)}_s{trial.config.get('seed', 0)}"
            f"{f'_f{fold}' if fold >= 0 else ''}_{trial.trial_id}"
        )
        return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)

    return name


def _trainable(
    sweep: Sweep, handle: DataHandle, unavailable: tuple[str, ...], per_trial: dict[str, float]
):
    from ray import tune

    from trainables.trial.trainable import train_trial

    return tune.with_resources(
        tune.with_parameters(
            train_trial,
            data=handle,
            unavailable_weights=unavailable,
            variant_keys=sweep.variant_keys,
            stop_points=sweep.stop_points(),
            faults=TrialFaults.from_environment(),  # the tests' (trainables/core/faults.py)
        ),
        per_trial,
    )


class _OneLineSaveError(logging.Filter):
    """Tune logs a failed copy of its experiment state into the experiment (a full disk, a
    store that went away) with the whole traceback of its copy thread, which buries the
    driver's own one-line summary of the same fault: kept as one line, its reason at the
    end."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
            record.msg = f"{record.getMessage().rstrip(': ')}: {reason}"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


_ONE_LINE_SAVE_ERROR = _OneLineSaveError()  # one instance: adding it again changes nothing
_NO_METRICS_OF_UNSTARTED = NoMetricsOfUnstarted()


def _environment() -> None:
    logging.getLogger("ray.tune.execution.experiment_state").addFilter(_ONE_LINE_SAVE_ERROR)
    logging.getLogger("ray.tune.analysis.experiment_analysis").addFilter(_NO_METRICS_OF_UNSTARTED)
    # The recorder writes progress.csv and TensorBoard; Tune's own loggers would write
    # them again (and its CSV logger keeps every trial's file open).
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    # A failed trial is one progress line and its table row's error column, not a traceback
    # of Tune's that buries the driver's one-line summary.
    os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] = "0"
    # Tune's own console output (its configuration box; Tune prints it whatever ``verbose``
    # says unless its older output is chosen, which ``verbose=0`` silences): the progress
    # lines say what it would
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    # Keeping one checkpoint per trial makes Tune snapshot the experiment state after every
    # checkpoint, and warn about it each time; the snapshot is a small JSON write.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's usage tag of the recorder's and watchdog's callbacks, without importing its
    # MLflow integration (seconds of every start)
    from trainables.core.ray_internals import light_callback_tag, trials_inherit_environment

    light_callback_tag()
    # a local Ray's trials on the workers it prestarted, not on new ones (cluster.py)
    trials_inherit_environment()


def build_tuner(
    sweep: Sweep, handle: DataHandle, unavailable: tuple[str, ...], per_trial: dict[str, float]
):
    """A new Tuner for ``sweep``."""
    from ray import tune

    from sweeps.driver.faults import driver_faults
    from sweeps.driver.recorder import TrialRecorder
    from sweeps.driver.schedulers import Asha, Fifo
    from sweeps.driver.watchdog import DEFAULT_STALL_TIMEOUT_S, Watchdog
    from sweeps.sinks.progress import ProgressLines
    from sweeps.sinks.progress_csv import ProgressCsv
    from sweeps.sinks.tensorboard import TensorBoardSink

    _environment()
    spec, plan = sweep.spec, sweep.plan
    if spec.scheduler == "asha":
        scheduler = Asha(
            time_attr="training_iteration",
            max_t=sweep.max_epochs,
            grace_period=sweep.grace,
            reduction_factor=sweep.space.reduction_factor,
        )
    else:
        scheduler = Fifo()
    sinks = [ProgressCsv(), TensorBoardSink(plan.varied), ProgressLines(plan.trials)]
    if spec.tracking:
        sinks.append(_tracking(sweep))
    watchdog = Watchdog(
        DEFAULT_STALL_TIMEOUT_S if spec.stall_timeout is None else spec.stall_timeout
    )
    grid = [k for k, v in plan.param_space.items() if is_grid(v)]
    recorder = TrialRecorder(
        sweep.variant,
        sweep.store,
        plan.varied,
        sinks=sinks,
        scheduler_stop=M.ASHA if spec.scheduler == "asha" else M.STOPPED,
        aggregate=not plan.searched,
        stalled=watchdog.stalled,
        planned=([], []) if plan.searched else (grid, [c.to_dict() for c in plan.configs]),
    )
    name = _name_creator(sweep)
    return tune.Tuner(
        _trainable(sweep, handle, unavailable, per_trial),
        param_space=plan.param_space,
        tune_config=tune.TuneConfig(
            metric=M.METRIC,
            mode=M.MODE,
            scheduler=scheduler,
            num_samples=plan.num_samples,
            search_alg=create_searcher(
                plan,
                seed=plan.configs[0].seed,
                journal=_optuna_journal(sweep),
                max_concurrent=spec.max_concurrent,
            ),
            # a searched plan's limit is its searcher's
            max_concurrent_trials=None if plan.searched else spec.max_concurrent,
            reuse_actors=True,
            trial_name_creator=name,
            trial_dirname_creator=name,
        ),
        run_config=tune.RunConfig(
            name=sweep.store.name,
            storage_path=sweep.store.storage_path,
            callbacks=[watchdog, recorder, *driver_faults(recorder)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            verbose=0,
        ),  # the progress lines instead of Tune's status tables
    )


def _tracking(sweep: Sweep):
    from dataclasses import asdict

    from sweeps.sinks.tracking import Tracking

    spec = sweep.spec
    params = {f"arg.{k}": v for k, v in asdict(spec).items() if v not in (None, (), False)}
    if "arg.tracking" in params:  # the URI's password is not a parameter to show
        params["arg.tracking"] = redact(params["arg.tracking"])
    params.update(
        {
            "plan.trials": sweep.plan.trials,
            "plan.searched": sweep.plan.searched,
            "plan.scheduler": spec.scheduler,
            "plan.grace": sweep.grace,
            "plan.max_epochs": sweep.max_epochs,
        }
    )
    tags = {
        "visionsweep.space": sweep.space.name,
        "visionsweep.experiment": str(sweep.store),
        "visionsweep.varied": ",".join(sweep.plan.varied),
        "visionsweep.variant_keys": ",".join(sweep.variant_keys),
    }
    return Tracking(
        spec.tracking,
        sweep.store,
        spec.tracking_experiment or sweep.space.name,
        sweep.name,
        params,
        tags,
    )


def _optuna_journal(sweep: Sweep) -> str | None:
    """Where a searched study keeps its Optuna study: inside a local experiment, so that
    optuna-dashboard opens it and a resumed search goes on with its history."""
    if not sweep.plan.searched or sweep.store.is_uri:
        return None
    return str(Path(sweep.store.root) / OPTUNA_JOURNAL)


def restore_tuner(
    sweep: Sweep, handle: DataHandle, unavailable: tuple[str, ...], per_trial: dict[str, float]
):
    """The Tuner of an interrupted sweep: finished trials stay, unfinished ones go on from
    their checkpoints (errored ones too with --retry-errored)."""
    from ray import tune

    _environment()
    location = sweep.store.location
    if not tune.Tuner.can_restore(location):
        raise UserError(
            f"`resume={sweep.store}`: no Ray Tune experiment state there (the "
            "sweep stopped before its first trial started); start it anew"
        )
    return tune.Tuner.restore(
        location,
        _trainable(sweep, handle, unavailable, per_trial),
        resume_unfinished=True,
        resume_errored=sweep.spec.retry_errored,
        restart_errored=False,
    )
