"""TensorBoard from the driver: per-trial scalars and a populated HParams view.

Ray Tune's own TBX logger writes hparams only when a trial ends and rejects numpy scalar
values; this callback writes the HParams session start as soon as a trial starts (plain
Python values only), scalars every epoch, and the session end when the trial ends. The
files go into each trial's own directory, so ``tensorboard --logdir EXPERIMENT`` shows
one run per trial, named by its variant.
"""
from __future__ import annotations

from ray.tune import Callback
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from trainables import metrics as M

HPARAM_METRICS = (M.BEST_VAL_LOSS, M.BEST_VAL_ACC, M.TEST_ACC, M.TEST_MACRO_F1,
                  M.VAL_LOSS, M.VAL_ACC)


def plain(value):
    """A value TensorBoard's HParams accepts: bool, int, float or str."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class TensorBoardCallback(Callback):
    def __init__(self, hparam_keys: list[str], variant):
        self.hparam_keys = hparam_keys
        self.variant = variant
        self.writers: dict[str, SummaryWriter] = {}

    def _writer(self, trial) -> SummaryWriter:
        writer = self.writers.get(trial.trial_id)
        if writer is None:
            writer = SummaryWriter(log_dir=trial.local_path)
            values = {"variant": self.variant(trial.config)}
            values.update({key: plain(trial.config.get(key)) for key in self.hparam_keys})
            experiment, session_start, _ = hparams(values, {m: 0.0 for m in HPARAM_METRICS})
            writer.file_writer.add_summary(experiment)
            writer.file_writer.add_summary(session_start)
            self.writers[trial.trial_id] = writer
        return writer

    def on_trial_start(self, iteration, trials, trial, **info):
        self._writer(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        writer = self._writer(trial)
        step = int(result.get(M.EPOCH, result.get("training_iteration", 0)))
        for key in M.SCALARS:
            value = result.get(key)
            if isinstance(value, (int, float)):
                writer.add_scalar(key, value, global_step=step)
        writer.flush()

    def _close(self, trial, status: int) -> None:
        writer = self.writers.pop(trial.trial_id, None)
        if writer is None:
            return
        writer.file_writer.add_summary(_session_end(status))
        writer.close()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._close(trial, api_pb2.STATUS_SUCCESS)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial, api_pb2.STATUS_FAILURE)

    def on_experiment_end(self, trials, **info):
        for trial in trials:
            self._close(trial, api_pb2.STATUS_UNKNOWN)


def _session_end(status: int) -> Summary:
    """The HParams session-end summary (what TensorBoard reads as the trial's status)."""
    data = plugin_data_pb2.HParamsPluginData(
        version=metadata.PLUGIN_DATA_VERSION,
        session_end_info=plugin_data_pb2.SessionEndInfo(status=status))
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name=metadata.PLUGIN_NAME, content=data.SerializeToString()))
    return Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=meta)])
