"""The sinks' base: what the recorder (sweeps/driver/recorder.py) knows of a trial, and the
four events it passes on to every sink. A sink overrides the events it needs; an OSError
from one stops the sweep as a storage fault (the recorder's rule)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrialEntry:
    """What the driver knows of one trial."""

    trial_id: str
    variant: str
    config: dict
    path: str  # the trial's folder on this machine, where Tune writes its files
    last: dict = field(default_factory=dict)  # the latest reported metrics
    status: str = "PENDING"
    stop_reason: str = ""
    error: str = ""
    retries: int = 0


class Sink:
    """Where trial events go. Each method is called once per event, in the driver."""

    def start(self, entry: TrialEntry) -> None:
        """The trial started (or went on after a resume)."""

    def result(self, entry: TrialEntry, result: dict) -> None:
        """The trial reported one epoch's metrics."""

    def end(self, entry: TrialEntry) -> None:
        """The trial ended: its status and stop reason are set."""

    def close(self) -> None:
        """The sweep ended (or stopped)."""

    def resumed(self, finished: list[str]) -> None:
        """The sweep goes on after a stop (``--resume``); ``finished``: the ids of the
        trials done before it."""
