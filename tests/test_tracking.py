"""Where teams keep their runs, for real: an MLflow tracking server on loopback with a SQLite
store, read back with MlflowClient, across a killed and resumed driver. (A searched study's
Optuna journal is checked in test_cli.py, with the search.)"""
import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest

from conftest import free_port, make_image_folder, run_cli, wait_for_port
from trainables.config import TrialConfig


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` with a SQLite backend store on a free loopback port."""
    base = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    mlflow = str(Path(sys.executable).parent / "mlflow")
    server = subprocess.Popen([mlflow, "server", "--backend-store-uri",
                               f"sqlite:///{base / 'mlflow.db'}", "--default-artifact-root",
                               str(base / "artifacts"), "--host", "127.0.0.1", "--port",
                               str(port), "--workers", "1"],
                              stdout=open(base / "server.log", "w"), stderr=subprocess.STDOUT)
    wait_for_port(server, port, base / "server.log")
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=30)


def test_a_tracked_sweep_killed_and_resumed_is_one_run_with_a_child_per_trial(
        mlflow_server, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    data = make_image_folder(tmp_path / "imgs", per_class=20)
    experiment = tmp_path / "runs" / "tracked"
    monkeypatch.setenv("VISIONSWEEP_FAULTS", "kill_driver_after=1")
    killed = run_cli(["--space", "single", "--set", "model=small_cnn", "--set", "image_size=32",
                      "--set", "early_stop_patience=0", "--data", str(data), "--max-epochs", "3",
                      "--num-samples", "3", "--max-concurrent", "1", "--tracking",
                      mlflow_server, "--tracking-experiment", "colours",
                      "--storage", str(tmp_path / "runs"), "--name", "tracked"], cwd=tmp_path)
    assert killed.returncode == -9
    monkeypatch.delenv("VISIONSWEEP_FAULTS")
    resumed = run_cli(["--resume", str(experiment)], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    client = MlflowClient(mlflow_server)
    found = client.get_experiment_by_name("colours")
    assert found.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's mode
    runs = client.search_runs([found.experiment_id])
    sweeps = [r for r in runs if r.data.tags.get("visionsweep.kind") == "sweep"]
    trials = {r.data.tags["trial_id"]: r for r in runs
              if r.data.tags.get("visionsweep.kind") == "trial"}
    assert len(sweeps) == 1  # the resumed sweep went on with its own runs
    parent = sweeps[0]
    assert parent.info.status == "FINISHED" and parent.data.params["arg.space"] == "single"
    assert {"results.csv", "sweep.json", "data_report.json", "split.csv"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)}
    table = pd.read_csv(experiment / "results.csv", dtype={"trial_id": str})
    assert set(trials) == set(table["trial_id"])  # one child per trial, no more
    every_field = {f.name for f in fields(TrialConfig)}
    for row in table.itertuples():
        child = trials[row.trial_id]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert set(child.data.params) == every_field  # its whole config
        assert child.data.tags["stop_reason"] == row.stop_reason == "completed"
        assert child.info.status == "FINISHED"
        history = client.get_metric_history(child.info.run_id, "val_loss")
        assert {m.step for m in history} == {1, 2, 3}  # every epoch, re-run ones once more
        assert child.data.metrics["test_acc"] == pytest.approx(row.test_acc)
        assert child.data.metrics["test_acc_high"] == pytest.approx(row.test_acc_high)
    # what report.py makes joins the sweep's run
    from sweeps import report

    assert report.main([str(experiment), "--latency-rounds", "1"]) == 0
    assert "report" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_a_tracking_server_that_goes_away_costs_the_tracking_not_the_sweep(mlflow_server,
                                                                           tmp_path, capsys):
    from sweeps.recorder import TrialEntry
    from sweeps.storage import Store
    from sweeps.tracking import Tracking

    store = Store(str(tmp_path), "exp")
    sink = Tracking(mlflow_server, store, "gone", "exp", {"arg.space": "single"}, {})
    entry = TrialEntry("t1", "small_cnn", {"model": "small_cnn", "seed": 0}, str(tmp_path))
    sink.start(entry)
    sink.result(entry, {"epoch": 1, "val_loss": 0.5})
    assert not sink.broken and json.loads(store.read_text("tracking.json"))["trials"]["t1"]
    sink.uri = f"http://127.0.0.1:{free_port()}"  # the server is gone: nothing answers
    sink.result(entry, {"epoch": 2, "val_loss": 0.4})  # no exception: a warning, once
    sink.end(entry)
    sink.close()
    assert sink.broken
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "MLflow tracking stopped" in warnings[0]
