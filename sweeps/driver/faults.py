"""The driver's faults on cue (the catalogue is trainables/core/faults.py): one Tune callback,
added beside the recorder only when VISIONSWEEP_FAULTS asks for a fault, that stops the
driver with a signal once enough trials have finished."""

from __future__ import annotations

from ray.tune import Callback

from trainables.core.faults import DRIVER_SIGNALS, GROUP_SIGNALS, asked, die, fault


class DriverFaults(Callback):
    """Watches the recorder's count of finished trials at each epoch report. It reads the
    environment there, not when it is made: a resumed sweep runs the callbacks pickled by
    its first run, and a resume that asks for no fault must not be stopped again."""

    def __init__(self, recorder):
        self.recorder = recorder
        self.signalled: set[str] = set()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        for name, signum in DRIVER_SIGNALS.items():
            after = fault(name)
            if after is not None and name not in self.signalled:
                if self.recorder.finished() >= after:
                    self.signalled.add(name)
                    die(signum, group=name in GROUP_SIGNALS)


def driver_faults(recorder) -> list[Callback]:
    """The callbacks to add after ``recorder``: none unless a fault is asked for."""
    return [DriverFaults(recorder)] if asked() else []
