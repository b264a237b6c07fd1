"""The commands a user runs (run, report, ensemble, export, predict, weights; cli.py is what
they share) and, below them, the driver of one sweep (driver/), where trial events go
(sinks/), the experiment folder (experiment/) and after-sweep analysis (analysis/).

For notebooks: ``from sweeps import run_study`` (sweeps/api.py)."""


def __getattr__(name: str):
    # the API on first use only: a command that imports sweeps.cli does not load Ray
    if name in ("run_study", "Study", "StudyError"):
        from sweeps import api

        return getattr(api, name)
    raise AttributeError(f"module 'sweeps' has no attribute {name!r}")
