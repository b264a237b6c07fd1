"""The Python API, for notebooks: a study in one call, and the after-sweep commands on what
it returns. It parses its arguments with the command line's own parser and runs the same
code (run.execute), so a notebook and a shell give the same sweep.

    from sweeps import run_study
    study = run_study("googlenet_strategies", smoke=True)
    study.table                       # results.csv as a DataFrame
    study.report()                    # report.html's path
    study.export()                    # the export folder of the best trial

A user's mistake raises ``StudyError`` (the command line prints it as one line); a sweep
with failed trials returns normally, its failures in the table's ``status`` column.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
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

    def report(self, *args: str, **options: Any) -> Path:
        """report.py on this experiment (options as its flags: ``latency_rounds=0``);
        returns report.html."""
        from sweeps import report
        from sweeps.experiment.files import REPORT_DIR

        _check(report.main([str(self.root), *args, *_flags(options)]))
        return Path(options.get("out") or self.root / REPORT_DIR) / "report.html"

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
    **options: Any,
) -> Study:
    """Run a study as ``python sweeps/run.py --space SPACE`` does and return its folder.

    ``overrides``: config fields, as ``--set KEY=VALUE`` (a list is a grid). ``options``:
    any other flag of run.py by its name (``num_samples=3``, ``scheduler="fifo"``,
    ``max_epochs=5``, ``overwrite=True``, ``max_failures=0``). ``resume``: an interrupted
    study's folder, continued as ``--resume`` does (with ``retry_errored=True`` if asked);
    it takes no space or other settings. Ray is started for the study and shut down when
    it ends, so a second call in the same interpreter starts afresh."""
    from sweeps import run

    if resume is not None:
        if space is not None or data is not None or overrides or smoke or name is not None:
            raise StudyError(
                "run_study(resume=...) continues a study as it was: give no space, data, "
                "overrides, smoke or name with it"
            )
        argv = ["--resume", str(resume), *_flags(options)]
        return _run(run, argv, Path(resume))
    if space is None:
        raise StudyError("run_study() needs a space (a study's name; see --list-spaces)")
    name = name or f"{space}-{time.strftime('%Y%m%d-%H%M%S')}"
    argv = ["--space", space, "--storage", str(storage), "--name", name]
    if data is not None:
        argv += ["--data", str(data)]
    if smoke:
        argv.append("--smoke")
    for key, value in (overrides or {}).items():
        text = (
            "[" + ",".join(map(_text, value)) + "]"
            if isinstance(value, (list, tuple))
            else _text(value)
        )
        argv += ["--set", f"{key}={text}"]
    argv += _flags(options)
    return _run(run, argv, Path(storage) / name)


def _run(run, argv: list[str], root: Path) -> Study:
    try:
        args = run.get_args_parser().parse_args(argv)
        code = run.execute(args, ["run_study", *argv])
    finally:
        run.stop_ray()
    if code not in (0, 1):  # stopped by a signal (130: Ctrl-C): not a finished study
        raise KeyboardInterrupt(
            f"the study stopped (exit status {code}); resume it with "
            f"run_study(resume={str(root)!r}) or python sweeps/run.py --resume '{root}'"
        )
    return Study(root, code)


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _flags(options: dict[str, Any]) -> list[str]:
    """``num_samples=3`` -> ``--num-samples 3``; ``overwrite=True`` -> ``--overwrite``."""
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not False and value is not None:  # 0 is a value (folds=0), not "off"
            argv += [flag, str(value)]
    return argv


def _check(code: int) -> None:
    if code != 0:
        raise StudyError(f"the command ended with status {code}")
