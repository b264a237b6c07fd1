"""The sweep in MLflow, where teams keep their runs: one parent run per sweep (its command
line, its plan, and at the end its tables, split and data report as artifacts; report.py and
ensemble.py add theirs), one child run per trial (its whole config as params, its variant
and varied values as tags, every epoch's metrics, its final scores with their intervals,
its stop reason), written from the same trial entries as the result table.

Runs are grouped in an MLflow experiment named after the study (``--tracking-experiment``
to choose another), so the sweeps of one study on one data set sit side by side. The run
ids are kept in the experiment folder (``tracking.json``): a resumed sweep goes on with its
own runs. A tracking server that cannot be reached is one line at the start; one that goes
away during the sweep costs the tracking (a warning line), never a trial.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from sweeps.experiment.files import ARTIFACTS, TRACKING_FILE
from sweeps.experiment.redact import redact, usable
from sweeps.experiment.storage import Store
from sweeps.sinks.base import Sink
from trainables.core import metrics as M
from trainables.core.errors import UserError

EXPERIMENT_KIND = "custom_model_development"  # MLflow's UI opens it as model training


def _client(uri: str):
    # a server that does not answer must cost seconds, not mlflow's minutes of retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow.tracking import MlflowClient

    if redact(uri) != uri:  # MLflow prints each run's link with the URI as given
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    return MlflowClient(tracking_uri=uri)


def check(uri: str, experiment: str | None = None) -> None:
    """A UserError now when the tracking server cannot be used, or ``experiment`` is one
    that was deleted there (MLflow keeps its name; a run cannot be started in it)."""
    try:
        client = _client(uri)
        client.search_experiments(max_results=1)
        found = client.get_experiment_by_name(experiment) if experiment else None
    except ImportError:
        raise UserError("--tracking needs MLflow: pip install mlflow") from None
    except Exception as exc:  # refused, unknown host, not an MLflow server, bad URI
        reason = str(exc).splitlines()[0][:200]
        raise UserError(
            f"`tracking={redact(uri)}`: the MLflow tracking server cannot be used "
            f"({reason}); start it (mlflow server ...) or check the URI"
        ) from None
    if found is not None and found.lifecycle_stage == "deleted":
        raise UserError(
            f"`tracking_experiment={experiment}`: that MLflow experiment was "
            "deleted (its name stays taken); restore it (mlflow experiments "
            f"restore --experiment-id {found.experiment_id}) or choose another "
            "name"
        )


def _metrics(values: dict, keys, step: int) -> list:
    """MLflow metrics of ``values[key]`` for each key that holds a number (not a flag, not
    NaN: no measurement), at ``step``."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [
        Metric(key, float(values[key]), now, step)
        for key in keys
        if isinstance(values.get(key), (int, float))
        and not isinstance(values[key], bool)
        and values[key] == values[key]
    ]


def _param_value(value):
    """A value MLflow takes as a param: a scalar as it is, anything else as its text."""
    return value if isinstance(value, (int, float, str, bool)) else str(value)


class Tracking(Sink):
    """A recorder sink (``sweeps/driver/recorder.py``)."""

    def __init__(
        self, uri: str, store: Store, experiment: str, run_name: str, params: dict, tags: dict
    ):
        # the object goes into Ray Tune's pickled experiment state: it keeps the URI with
        # its password masked, the password itself only in this process's environment
        if redact(uri) != uri:
            os.environ["MLFLOW_TRACKING_URI"] = uri
        self.uri, self.store = redact(uri), store
        self.experiment, self.run_name = experiment, run_name
        self.params, self.tags = params, tags
        self.state: dict | None = None  # uri, experiment_id, parent_run_id, trials
        self.broken = ""

    # -------------------------------------------------------------- the parent run

    def _open(self) -> dict:
        """The sweep's parent run: made once, found again on --resume (tracking.json)."""
        if self.state is not None:
            return self.state
        client = _client(usable(self.uri))
        if self.store.exists(TRACKING_FILE):
            self.state = json.loads(self.store.read_text(TRACKING_FILE))
            client.update_run(self.state["parent_run_id"], status="RUNNING")
            return self.state
        found = client.get_experiment_by_name(self.experiment)
        experiment_id = (
            found.experiment_id
            if found
            else client.create_experiment(
                self.experiment, tags={"mlflow.experimentKind": EXPERIMENT_KIND}
            )
        )
        run = client.create_run(
            experiment_id, run_name=self.run_name, tags={**self.tags, "visionsweep.kind": "sweep"}
        )
        for key, value in self.params.items():
            client.log_param(run.info.run_id, key, _param_value(value))
        self.state = {
            "uri": self.uri,
            "experiment_id": experiment_id,
            "parent_run_id": run.info.run_id,
            "trials": {},
        }
        self._save()
        return self.state

    def _save(self) -> None:
        self.store.write_text(TRACKING_FILE, json.dumps(self.state, indent=1))

    def _safely(self, work, *args) -> None:
        """Tracking must never stop the sweep: the first failure turns it off, in a line."""
        if self.broken:
            return
        try:
            work(*args)
        except Exception as exc:  # the server went away, refused, timed out, misbehaved
            self.broken = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            print(
                f"warning: MLflow tracking stopped ({self.broken}); the sweep goes on, "
                "its table and TensorBoard files are complete",
                file=sys.stderr,
                flush=True,
            )

    # -------------------------------------------------------------- the sink

    def start(self, entry) -> None:
        self._safely(self._child, entry)

    def _child(self, entry) -> str:
        state = self._open()
        run_id = state["trials"].get(entry.trial_id)
        if run_id:  # resumed: its own run goes on
            _client(usable(self.uri)).update_run(run_id, status="RUNNING")
            return run_id
        client = _client(usable(self.uri))
        seed = entry.config.get("seed", 0)
        run = client.create_run(
            state["experiment_id"],
            run_name=f"{entry.variant} s{seed} {entry.trial_id}",
            tags={
                "mlflow.parentRunId": state["parent_run_id"],
                "visionsweep.kind": "trial",
                "variant": entry.variant,
                "trial_id": entry.trial_id,
                **{
                    f"varied.{k}": str(entry.config.get(k))
                    for k in self.tags.get("visionsweep.varied", "").split(",")
                    if k
                },
            },
        )
        from mlflow.entities import Param

        from trainables.core.config import TrialConfig

        config = TrialConfig.from_dict(entry.config).to_dict()  # every field, defaults too
        params = [Param(k, str(_param_value(v))) for k, v in sorted(config.items())]
        for start in range(0, len(params), 100):
            client.log_batch(run.info.run_id, params=params[start : start + 100])
        state["trials"][entry.trial_id] = run.info.run_id
        self._save()
        return run.info.run_id

    def _run_id(self, entry) -> str:
        return self._open()["trials"].get(entry.trial_id) or self._child(entry)

    def result(self, entry, result: dict) -> None:
        self._safely(self._log, entry, result)

    def _log(self, entry, result: dict) -> None:
        metrics = _metrics(result, M.SCALARS, int(result.get(M.EPOCH, 0)))
        _client(usable(self.uri)).log_batch(self._run_id(entry), metrics=metrics)

    def end(self, entry) -> None:
        self._safely(self._finish, entry)

    def _finish(self, entry) -> None:
        from mlflow.entities import RunTag

        client, run_id = _client(usable(self.uri)), self._run_id(entry)
        last = entry.last
        keys = (*M.TEST_INTERVALS, M.TEST_ACC_TTA, M.TEST_MACRO_F1_TTA, *M.COSTS, M.BEST_EPOCH)
        metrics = _metrics(last, keys, int(last.get(M.EPOCH, 0)))
        tags = [
            RunTag("stop_reason", entry.stop_reason or M.UNFINISHED),
            RunTag("status", entry.status),
            RunTag("weights", str(last.get(M.WEIGHTS, ""))),
        ]
        if entry.error:
            tags.append(RunTag("error", entry.error[:500]))
        client.log_batch(run_id, metrics=metrics, tags=tags)
        client.set_terminated(run_id, "FAILED" if entry.status == "ERROR" else "FINISHED")

    def close(self) -> None:
        self._safely(self._close)

    def _close(self) -> None:
        state = self._open()
        client = _client(usable(self.uri))
        with tempfile.TemporaryDirectory() as folder:
            for name in ARTIFACTS:
                if self.store.exists(name):
                    path = Path(folder) / name
                    path.write_text(self.store.read_text(name), encoding="utf-8")
                    client.log_artifact(state["parent_run_id"], str(path))
        client.set_terminated(state["parent_run_id"], "FINISHED")


def log_files(experiment_root: Path, files: list[Path], folder: str) -> str:
    """After the sweep (report.py, ensemble.py): add ``files`` to the sweep's parent run, if
    it was tracked. Returns a line saying what happened ('' when not tracked)."""
    state_file = Path(experiment_root) / TRACKING_FILE
    if not state_file.exists():
        return ""
    try:
        state = json.loads(state_file.read_text())
        client = _client(usable(state["uri"]))
        for path in files:
            client.log_artifact(state["parent_run_id"], str(path), artifact_path=folder)
        return f"MLflow: added {len(files)} file(s) to the sweep's run at {state['uri']}"
    except Exception as exc:  # tracking is a convenience: its failure is a line
        return f"MLflow: could not add the {folder} ({str(exc).splitlines()[0][:160]})"
