"""The Python API, for notebooks: a study in one call, and the after-sweep commands on what
it returns. ``run_study`` builds the sweep's spec from its typed arguments and runs it with
the code the command line runs (run.study), so a notebook and a shell give the same sweep;
run.py is a parser in front of it.

    from sweeps import run_study
    study = run_study("googlenet_strategies", smoke=True)
    study.table                       # results.csv as a DataFrame
    study.report()                    # report.html's path
    study.export()                    # the export folder of the best trial

A user's mistake raises ``StudyError`` (the command line prints it as one line); a sweep
with failed trials returns normally, its failures in the table's ``status`` column.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from trainables.core.errors import UserError

StudyError = UserError  # the one exception type of a user's mistake


@dataclass(frozen=True)
class Study:
    """A finished (or stopped) sweep's experiment folder."""

    root: Path
    exit_code: int  # 0: every trial ended well; 1: some failed (see the table)

    @property
    def table(self) -> pd.DataFrame:
        """One row per trial: results.csv."""
        from sweeps.experiment.folder import load_experiment

        return load_experiment(self.root).table

    @property
    def by_variant(self) -> pd.DataFrame | None:
        """Mean and std per variant (a grid study with --num-samples > 1), else None."""
        from sweeps.experiment.files import BY_VARIANT_CSV

        path = self.root / BY_VARIANT_CSV
        return pd.read_csv(path) if path.exists() else None

    def report(self, **settings: Any) -> Path:
        """report.py on this experiment, its settings named as its flags are
        (``latency_rounds=0``, ``pdf=True``, ``out=...``); returns report.html."""
        from sweeps.report import make_report

        return make_report(self.root, **settings)

    def export(self, trial: str | None = None, out: str | Path | None = None) -> Path:
        """export.py on this experiment: the given trial, or the one with the lowest
        validation loss; returns the export folder."""
        from sweeps import export

        return export.export(self.root, trial, out)


def run_study(
    space: str | None = None,
    data: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    smoke: bool = False,
    storage: str | Path = "runs",
    name: str | None = None,
    resume: str | Path | None = None,
    **settings: Any,
) -> Study:
    """Run a study as ``python sweeps/run.py --space SPACE`` does and return its folder.

    ``overrides``: trial-config fields by name, typed (``{"lr": 0.001}``; a list is a grid,
    as ``--set lr=[...]``). ``settings``: the sweep's other settings, each named as run.py's
    flag is (``num_samples=3``, ``scheduler="fifo"``, ``max_epochs=5``, ``folds=5``,
    ``overwrite=True``, ``max_failures=0``) and checked as it is; a mistake names the
    setting (``folds: must be at least 3, got 2``). ``resume``: an interrupted study's
    folder, continued as ``--resume`` does (with ``retry_errored=True``, and
    ``trust_state=True`` for a folder whose Ray Tune state no sweep of yours sealed); it takes
    no space or other settings. Ray is started for the study and shut down when it ends, so
    a second call in the same interpreter starts afresh."""
    from sweeps import run
    from sweeps.driver.spec import SweepSpec

    if resume is not None:
        if space is not None or data is not None or overrides or smoke or name is not None:
            raise StudyError(
                "run_study(resume=...) continues a study as it was: give no space, data, "
                "overrides, smoke or name with it"
            )
        spec = SweepSpec.build(resume=str(resume), **_sweep_settings(settings))
        return _run(run, spec, Path(resume))
    if space is None:
        raise StudyError("run_study() needs a space (a study's name; see --list-spaces)")
    name = name or f"{space}-{time.strftime('%Y%m%d-%H%M%S')}"
    spec = SweepSpec.build(
        space=space,
        data=None if data is None else str(data),
        overrides=overrides or {},
        smoke=smoke,
        storage=str(storage),
        name=name,
        **_sweep_settings(settings),
    )
    return _run(run, spec, Path(storage) / name)


def _sweep_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings as the spec holds them: paths as text; the cluster and the tracking
    server default, as on the command line, to $RAY_ADDRESS and $MLFLOW_TRACKING_URI."""
    out = {k: str(v) if isinstance(v, Path) else v for k, v in settings.items()}
    out.setdefault("address", os.environ.get("RAY_ADDRESS"))
    out.setdefault("tracking", os.environ.get("MLFLOW_TRACKING_URI"))
    return out


def _run(run, spec, root: Path) -> Study:
    from sweeps.experiment.redact import redact

    shown = {**asdict(spec), "tracking": redact(spec.tracking)}
    call = ", ".join(f"{k}={v!r}" for k, v in shown.items() if v not in (None, False, {}))
    try:
        code = run.study(spec, [f"run_study({call})"])
    finally:
        run.stop_ray()
    if code not in (0, 1):  # stopped by a signal (130: Ctrl-C): not a finished study
        raise KeyboardInterrupt(
            f"the study stopped (exit status {code}); resume it with "
            f"run_study(resume={str(root)!r}) or python sweeps/run.py --resume '{root}'"
        )
    return Study(root, code)
