"""One Ray Tune callback turns Tune's events into trial entries and feeds everything the
driver writes from them: each trial's progress.csv, TensorBoard, the progress lines, and the
result table. The variant of a trial is worked out once, here.

A storage error in any of them (a full disk, a lost permission, a store that went away)
stops the sweep where it is, as an interruption does: the last good table stays, trials in
flight keep their checkpoints, and the driver says what failed and how to resume.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ray.tune import Callback

from sweeps.driver.memory import kernel_oom_kills, killed_for_memory
from sweeps.experiment.files import PROGRESS_CSV
from sweeps.experiment.storage import Store
from sweeps.experiment.tables import plain, trial_row, write_tables
from sweeps.sinks.base import TrialEntry
from trainables.core import metrics as M

FINISHED = ("TERMINATED", "ERROR")
TABLE_BUDGET = 0.02  # at most this share of the sweep's time goes to rewriting its table
REUSE_FAILED = (
    "Tune could not hand this trial a finished trial's worker (that trial's "
    "thread did not end in time); --resume --retry-errored runs it again"
)


@dataclass
class RunningSweep:
    """What the sweep running in this process shares with the parts of it that Tune
    restores from the pickles in a resumed experiment's folder (the recorder, the
    schedulers), which hold the place where the sweep began and no reference to the
    driver: the experiment it runs (set by the driver before Tune starts), the recorder
    Tune set up, and Tune's searcher as the scheduler sees it."""

    store: Store | None = None
    recorder: TrialRecorder | None = None
    searcher: object = None


THIS_SWEEP = RunningSweep()


def begin_sweep(store: Store) -> None:
    """A sweep begins in this process, in ``store``: nothing of an earlier one (a
    notebook's) is kept. A copied or moved experiment must write into itself."""
    THIS_SWEEP.store, THIS_SWEEP.recorder, THIS_SWEEP.searcher = store, None, None


def know_searcher(searcher) -> None:
    """Tune's searcher, which the sweep's scheduler is shown (schedulers.py)."""
    THIS_SWEEP.searcher = searcher


def into_this_experiment(trial) -> None:
    """Point a trial Tune is adding into the bound experiment: Tune moves the trials it
    restores, but makes the trials its restored grid has not made yet where the sweep
    began (a copy's resume wrote them into the original)."""
    store = THIS_SWEEP.store
    if store is None:
        return
    from trainables.core.ray_internals import move_trial_storage

    parent = store.root.rsplit("/", 1)[0]
    move_trial_storage(trial, parent, store.name, store.fs if store.is_uri else None)


class TrialRecorder(Callback):
    """``sinks``: Sink objects (sweeps/sinks/base.py), called with each event in turn.
    ``scheduler_stop`` is the stop reason of a trial that ended without giving
    one (the scheduler stopped it). ``planned``: a grid's keys and every point of it (as
    configs), so that a sweep stopped before Tune created some trials still tables them."""

    def __init__(
        self,
        variant: Callable[[dict], str],
        store: Store,
        varied_keys: list[str],
        sinks: list,
        scheduler_stop: str,
        aggregate: bool = True,
        stalled: dict[str, str] | None = None,
        planned: tuple[list[str], list[dict]] = ([], []),
    ):
        self.variant = variant
        self.store = store
        self.varied_keys = varied_keys
        self.sinks = sinks
        self.scheduler_stop = scheduler_stop
        self.aggregate = aggregate
        self.stalled = {} if stalled is None else stalled  # the watchdog's stopped trials
        self.oom_kills: int | None = None  # the kernel's count when the sweep started
        self.planned = planned
        self.entries: dict[str, TrialEntry] = {}
        self.fault: str = ""  # the storage error that stopped the sweep
        self._dirty = False  # a trial ended since the table was last written
        self._table_at = 0.0  # when it was last written (time.monotonic)
        self._table_cost = 0.0  # and how long that took

    def setup(self, **info):
        # Tune calls this when the sweep starts, also on a recorder it restored from an
        # interrupted sweep's state: the driver finds the one in use through active()
        THIS_SWEEP.recorder = self
        self.oom_kills = kernel_oom_kills()
        bound = THIS_SWEEP.store
        if bound is not None and bound.location != self.store.location:  # a copy, resumed
            self.store = bound
            for sink in self.sinks:
                if hasattr(sink, "store"):
                    sink.store = bound

    # ---------------------------------------------------------------- entries

    def _entry(self, trial) -> TrialEntry:
        entry = self.entries.get(trial.trial_id)
        if entry is None:
            config = {k: plain(v) for k, v in trial.config.items()}
            entry = TrialEntry(trial.trial_id, self.variant(config), config, str(trial.local_path))
            self.entries[trial.trial_id] = entry
            if trial.checkpoint is not None:  # resumed: go on with the files it had
                self._safely(self._restore_files, trial, entry)
        return entry

    def _restore_files(self, trial, entry: TrialEntry) -> None:
        """A resumed sweep's driver writes into a fresh local folder that Tune copies into
        the store: bring the trial's progress.csv from the store first, as Tune's own logger
        does, so its earlier epochs are not lost."""
        relative = f"{Path(trial.path).name}/{PROGRESS_CSV}"
        local = Path(entry.path) / PROGRESS_CSV
        if self.store.exists(relative) and not local.exists():
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(self.store.read_text(relative), encoding="utf-8")

    def _drop_partial_checkpoints(self, trial) -> None:
        """A worker lost mid-copy of a checkpoint leaves it partial: only the last checkpoint
        Tune registered is whole, the one a retry starts from and readers may trust."""
        keep = Path(trial.checkpoint.path).name if trial.checkpoint is not None else None
        try:  # a removal frees space: done even when the sweep is stopping for lack of it
            self.store.drop_checkpoints(Path(trial.path).name, keep)
        except OSError:
            pass

    def configs(self) -> dict[str, dict]:
        return {trial_id: entry.config for trial_id, entry in self.entries.items()}

    def rows(self, unfinished: bool = False) -> list[dict]:
        """Table rows of the finished trials (and, with ``unfinished``, of the others, also
        those of the grid that Tune has not created yet)."""
        entries = [e for e in self.entries.values() if unfinished or e.status in FINISHED]
        if unfinished:
            entries += self._not_created()
        return [trial_row(e, self.varied_keys) for e in entries]

    def _not_created(self) -> list[TrialEntry]:
        """The grid's points that no trial holds yet (Tune creates trials as slots free)."""
        keys, points = self.planned
        if not points:
            return []
        made = Counter(tuple(plain(e.config.get(k)) for k in keys) for e in self.entries.values())
        missing = []
        for config in points:
            key = tuple(plain(config.get(k)) for k in keys)
            if made[key]:
                made[key] -= 1
            else:
                missing.append(
                    TrialEntry("", self.variant(config), config, "", status="NOT_STARTED")
                )
        return missing

    # ---------------------------------------------------------------- Tune's events

    def on_trial_start(self, iteration, trials, trial, **info):
        entry = self._entry(trial)
        entry.status = "RUNNING"
        self._each("start", entry)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        entry = self._entry(trial)
        entry.last = {k: plain(v) for k, v in result.items() if not isinstance(v, dict)}
        entry.retries = trial.run_metadata.num_failures
        self._each("result", entry, entry.last)

    def on_trial_complete(self, iteration, trials, trial, **info):
        entry = self._entry(trial)
        entry.status = "TERMINATED"
        entry.stop_reason = entry.last.get(M.STOP_REASON) or self.scheduler_stop
        entry.retries = trial.run_metadata.num_failures
        self._end(entry)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._drop_partial_checkpoints(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._drop_partial_checkpoints(trial)
        entry = self._entry(trial)
        entry.status, entry.stop_reason = "ERROR", M.ERROR
        entry.error = _error_text(trial.error_file)
        memory = killed_for_memory(_error_file_text(trial.error_file) or "", self.oom_kills)
        if memory:
            entry.stop_reason, entry.error = M.OOM, memory
        if trial.trial_id in self.stalled:  # its last attempt was stopped by the watchdog
            entry.stop_reason, entry.error = M.STALLED, self.stalled[trial.trial_id]
        entry.retries = trial.run_metadata.num_failures
        self._end(entry)

    def on_experiment_end(self, trials, **info):
        # The sweep ends with every trial finished, unless it was stopped (a signal, a
        # storage fault): a trial that never got to its end is unfinished, however Tune
        # marks it while it shuts down, and --resume goes on with it.
        for trial in trials:
            entry = self._entry(trial)
            if entry.status in FINISHED:
                continue
            if trial.status == "ERROR":  # failed where Tune called no callback (its start)
                entry.status, entry.stop_reason = "ERROR", M.ERROR
                entry.error = _unannounced_error(trial)
            else:
                entry.status = "INTERRUPTED" if entry.last else "NOT_STARTED"
        self.write_table(unfinished=True)
        self._each("close")

    def finished(self) -> int:
        return len(self._finished_ids())

    def _finished_ids(self) -> list[str]:
        return [e.trial_id for e in self.entries.values() if e.status in FINISHED]

    # ---------------------------------------------------------------- resume

    def get_state(self) -> dict:
        return {"entries": [asdict(e) for e in self.entries.values() if e.status in FINISHED]}

    def set_state(self, state: dict) -> None:
        for raw in state.get("entries", []):
            entry = TrialEntry(**raw)
            self.entries[entry.trial_id] = entry
        self._each("resumed", self._finished_ids())

    # ---------------------------------------------------------------- writing

    def _end(self, entry: TrialEntry) -> None:
        self._each("end", entry)
        self._dirty = True
        self._table_when_due()

    def on_step_end(self, iteration, trials, **info):
        for trial in trials:
            if trial.status == "ERROR" and self._entry(trial).status not in FINISHED:
                self._ended_unannounced(trial)
        if self._dirty:
            self._table_when_due()

    def _ended_unannounced(self, trial) -> None:
        """A trial Tune set to ERROR without an event: one whose reuse of a cached worker
        failed. Tune tells neither the callbacks nor the searcher, whose count of running
        trials then never goes down: with --max-concurrent the sweep would wait forever
        for a slot. Told here, it goes on, and the trial is tabled as an error."""
        entry = self._entry(trial)
        entry.status, entry.stop_reason = "ERROR", M.ERROR
        entry.error = _unannounced_error(trial)
        entry.retries = trial.run_metadata.num_failures
        if THIS_SWEEP.searcher is not None:
            THIS_SWEEP.searcher.on_trial_complete(trial.trial_id, error=True)
        self._end(entry)

    def _table_when_due(self) -> None:
        """Rewrite the table when a trial has ended, unless that would take more than
        TABLE_BUDGET of the sweep's time (a table of hundreds of rows, trials ending every
        second): then at the next step when it is due, and always at the end."""
        now = time.monotonic()
        if (now - self._table_at) * TABLE_BUDGET < self._table_cost:
            return
        self.write_table()
        self._table_at, self._dirty = time.monotonic(), False
        self._table_cost = self._table_at - now

    def write_table(self, unfinished: bool = False) -> None:
        rows = self.rows(unfinished)
        if rows:
            self._safely(write_tables, rows, self.store, self.aggregate)

    def _each(self, method: str, *args) -> None:
        for sink in self.sinks:
            self._safely(getattr(sink, method), *args)

    def _safely(self, write, *args) -> None:
        if self.fault:  # the sweep is stopping; write nothing more
            return
        try:
            write(*args)
        except OSError as exc:  # disk full, permission lost, a store that went away
            where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
            self.fault = (f"{exc.strerror or str(exc) or type(exc).__name__}{where}").splitlines()[
                0
            ][:300]
            # out of Tune's loop, as an interruption: unfinished trials stay resumable
            raise StorageFault(self.fault) from exc


class StorageFault(Exception):
    """A write of the driver's failed; the sweep stops and can be resumed."""


def active() -> TrialRecorder | None:
    """The recorder Tune set up for the sweep running in this process, if it got so far."""
    return THIS_SWEEP.recorder


class NoMetricsOfUnstarted(logging.Filter):
    """At a sweep's end Tune reads every trial's metrics back from its folder (for its
    result grid, which the driver does not use) and warns, a line each, about the trials
    that have none: on a stopped sweep, every trial Tune had made but not started, nine
    lines of stderr for the README's study stopped early. Those lines go (the table lists
    such trials as unfinished, and --resume runs them); a trial that did start and whose
    files are missing is still warned about."""

    def filter(self, record: logging.LogRecord) -> bool:
        header, *lines = record.getMessage().split("\n")
        recorder = active()
        if not header.startswith("Failed to fetch metrics for ") or recorder is None:
            return True
        unstarted = {e.trial_id for e in recorder.entries.values() if e.status == "NOT_STARTED"}
        kept = [line for line in lines if not _names_one_of(line, unstarted)]
        if not kept:
            return False
        if len(kept) < len(lines):
            record.msg = f"Failed to fetch metrics for {len(kept)} trial(s):\n" + "\n".join(kept)
            record.args = ()
        return True


def _names_one_of(line: str, trial_ids: set[str]) -> bool:
    """Whether Tune's line ``- NAME: ERROR`` is of one of ``trial_ids`` (a trial's name
    ends in its id: builder.py)."""
    name = line.removeprefix("- ").split(":", 1)[0]
    return line.startswith("- ") and any(name.endswith(f"_{t}") for t in trial_ids)


def _unannounced_error(trial) -> str:
    """Why a trial Tune set to ERROR without an event ended: a failed reuse of a worker
    (Tune's message names reset_config, which says nothing to a user), or its error file."""
    text = _error_text(trial.error_file)
    return REUSE_FAILED if "reset_config" in text else text


def _error_file_text(path: str | None) -> str | None:
    """A trial's whole error file (None when there is none)."""
    if not path or not os.path.exists(path):
        return None
    return Path(path).read_text(errors="replace")


def _error_text(path: str | None) -> str:
    """The last line of a trial's error file: the exception and its message."""
    text = _error_file_text(path)
    if text is None:
        return "trial failed (no error file)"
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else ""
