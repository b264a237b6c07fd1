"""TensorBoard: per-trial scalars and a populated HParams view, written through
TensorBoard's public summary API (``hparams_config_pb``, ``hparams_pb``).

The HParams session starts as soon as a trial starts (with plain Python values; Ray Tune's
own logger writes it only when a trial ends, and refuses numpy values), and scalars follow
every epoch. The files go into each trial's own folder, so ``tensorboard --logdir
EXPERIMENT`` shows one run per trial, named by its variant. (The public API has no session
end summary; a trial's status is in the result table.)
"""

from __future__ import annotations

from tensorboard.plugins.hparams import summary_v2
from torch.utils.tensorboard import SummaryWriter

from sweeps.sinks.base import Sink
from trainables.core import metrics as M

HPARAM_METRICS = (
    M.BEST_VAL_LOSS,
    M.BEST_VAL_ACC,
    M.TEST_ACC,
    M.TEST_MACRO_F1,
    M.VAL_LOSS,
    M.VAL_ACC,
)


def plain(value):
    """A value TensorBoard's HParams accepts: bool, int, float or str."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class TensorBoardSink(Sink):
    """A recorder sink (``sweeps/driver/recorder.py``)."""

    def __init__(self, hparam_keys: list[str]):
        self.hparam_keys = hparam_keys
        self.writers: dict[str, SummaryWriter] = {}

    def _writer(self, entry) -> SummaryWriter:
        writer = self.writers.get(entry.trial_id)
        if writer is None:
            writer = SummaryWriter(log_dir=entry.path)
            values = {"variant": entry.variant}
            values.update({key: plain(entry.config.get(key)) for key in self.hparam_keys})
            config = summary_v2.hparams_config_pb(
                hparams=[summary_v2.HParam(name) for name in values],
                metrics=[summary_v2.Metric(name) for name in HPARAM_METRICS],
            )
            writer.file_writer.add_summary(config)
            writer.file_writer.add_summary(summary_v2.hparams_pb(values, trial_id=entry.trial_id))
            self.writers[entry.trial_id] = writer
        return writer

    def start(self, entry) -> None:
        self._writer(entry)

    def result(self, entry, result: dict) -> None:
        writer = self._writer(entry)
        step = int(result.get(M.EPOCH, result.get("training_iteration", 0)))
        for key in M.SCALARS:
            value = result.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(key, value, global_step=step)
        writer.flush()

    def end(self, entry) -> None:
        writer = self.writers.pop(entry.trial_id, None)
        if writer is not None:
            writer.close()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()
