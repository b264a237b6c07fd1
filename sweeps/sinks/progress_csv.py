"""Each trial's progress.csv, written by the driver from what the trial reported."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from sweeps.experiment.files import PROGRESS_CSV
from sweeps.experiment.storage import write_atomic
from sweeps.sinks.base import Sink, TrialEntry
from trainables.core import metrics as M
from trainables.core.faults import before_write


class ProgressCsv(Sink):
    """Each trial's progress.csv: one row per reported epoch, every scalar Tune reported.
    A trial that went on from an earlier checkpoint runs some epochs again: their earlier
    rows are replaced, so each epoch appears once, as it counted."""

    def __init__(self):
        self.columns: dict[str, list[str]] = {}
        self.last_epoch: dict[str, int] = {}

    def result(self, entry: TrialEntry, result: dict) -> None:
        path = Path(entry.path) / PROGRESS_CSV
        if entry.trial_id not in self.columns:
            self._open(entry.trial_id, path, result)
        epoch = int(result.get(M.EPOCH, 0))
        if epoch <= self.last_epoch[entry.trial_id]:
            self._truncate(path, epoch)
        self.last_epoch[entry.trial_id] = epoch
        out = io.StringIO()
        writer = csv.DictWriter(
            out, self.columns[entry.trial_id], extrasaction="ignore", lineterminator="\n"
        )
        if not path.exists() or not path.stat().st_size:
            writer.writeheader()
        writer.writerow(result)
        path.parent.mkdir(parents=True, exist_ok=True)
        before_write(path)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(out.getvalue())

    def _open(self, trial_id: str, path: Path, result: dict) -> None:
        columns, last = list(result), 0
        if path.exists() and path.stat().st_size:  # a resumed trial: its own columns
            with open(path, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
                columns = list(rows[0].keys()) if rows else columns
            last = max((int(float(r.get(M.EPOCH) or 0)) for r in rows), default=0)
        self.columns[trial_id], self.last_epoch[trial_id] = columns, last

    @staticmethod
    def _truncate(path: Path, epoch: int) -> None:
        """Keep the rows of the epochs before ``epoch``."""
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            kept = [r for r in reader if int(float(r.get(M.EPOCH) or 0)) < epoch]
        out = io.StringIO()
        writer = csv.DictWriter(out, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
        write_atomic(path, out.getvalue())

    def end(self, entry: TrialEntry) -> None:
        self.columns.pop(entry.trial_id, None)
        self.last_epoch.pop(entry.trial_id, None)

    def close(self) -> None:
        self.columns.clear()
        self.last_epoch.clear()
