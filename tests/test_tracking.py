"""Where teams keep their runs, for real: an MLflow tracking server on loopback with a SQLite
store, read back with MlflowClient, across a killed and resumed driver; and one over a
PostgreSQL server started for the test. (A searched study's Optuna journal is checked in
test_cli.py, with the search.)"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest

from helpers import free_port, make_image_folder, run_cli, wait_for_port
from trainables.core.config import TrialConfig

pytestmark = pytest.mark.integration


def start_mlflow(base: Path, backend_store: str):
    """``mlflow server`` over ``backend_store`` on a free loopback port: (process, URI)."""
    port = free_port()
    mlflow = str(Path(sys.executable).parent / "mlflow")
    server = subprocess.Popen(
        [
            mlflow,
            "server",
            "--backend-store-uri",
            backend_store,
            "--default-artifact-root",
            str(base / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=open(base / "server.log", "w"),
        stderr=subprocess.STDOUT,
    )
    wait_for_port(server, port, base / "server.log")
    return server, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` with a SQLite backend store."""
    base = tmp_path_factory.mktemp("mlflow")
    server, uri = start_mlflow(base, f"sqlite:///{base / 'mlflow.db'}")
    yield uri
    server.terminate()
    server.wait(timeout=30)


def _postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))  # Debian's layout
    return versions[-1].parent if versions else None


@pytest.fixture
def postgres():
    """A PostgreSQL server of its own (Debian's packages: initdb, pg_ctl) on a free loopback
    port, trust authentication, database ``mlflow``: its URI. As root, PostgreSQL runs as
    the ``postgres`` user, which it insists on."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="visionsweep-pg-"))  # outside pytest's 0700 tree
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres")
    port = free_port()
    data = base / "data"

    def pg(tool: str, *args: str) -> None:
        subprocess.run(
            [*as_user, str(bin_dir / tool), *args], check=True, capture_output=True, timeout=60
        )

    pg("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    pg(
        "pg_ctl",
        "-D",
        str(data),
        "-l",
        str(base / "server.log"),
        "-w",
        "start",
        "-o",
        f"-p {port} -k {base} -c listen_addresses=127.0.0.1",
    )
    try:
        pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow")
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        pg("pg_ctl", "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


def read_back(client, experiment_name: str, experiment: Path, epochs: int):
    """What MLflow holds of a tracked sweep, checked against its results.csv: one parent run
    with the sweep's files, one child per trial with its whole config and every epoch."""
    found = client.get_experiment_by_name(experiment_name)
    assert found.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's mode
    runs = client.search_runs([found.experiment_id])
    sweeps = [r for r in runs if r.data.tags.get("visionsweep.kind") == "sweep"]
    trials = {
        r.data.tags["trial_id"]: r for r in runs if r.data.tags.get("visionsweep.kind") == "trial"
    }
    assert len(sweeps) == 1  # a resumed sweep goes on with its own runs
    parent = sweeps[0]
    assert parent.info.status == "FINISHED"
    assert {"results.csv", "sweep.json", "data_report.json", "split.csv"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }
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
        assert {m.step for m in history} == set(range(1, epochs + 1))  # every epoch, once
        assert child.data.metrics["test_acc"] == pytest.approx(row.test_acc)
        assert child.data.metrics["test_acc_high"] == pytest.approx(row.test_acc_high)
    return parent


def test_a_tracked_sweep_killed_and_resumed_is_one_run_with_a_child_per_trial(
    mlflow_server, tmp_path, monkeypatch, ray_address
):
    from mlflow.tracking import MlflowClient

    data = make_image_folder(tmp_path / "imgs", per_class=20)
    experiment = tmp_path / "runs" / "tracked"
    monkeypatch.setenv("VISIONSWEEP_FAULTS", "kill_driver_after=1")
    # a URI with a password (the server here ignores it): recorded and shown nowhere
    with_password = mlflow_server.replace("http://", "http://someone:s3cret-pw@")
    killed = run_cli(
        [
            "--space",
            "single",
            "--set",
            "model=small_cnn",
            "--set",
            "image_size=32",
            "--set",
            "early_stop_patience=0",
            "--data",
            str(data),
            "--max-epochs",
            "3",
            "--num-samples",
            "3",
            "--max-concurrent",
            "1",
            "--tracking",
            with_password,
            "--tracking-experiment",
            "colours",
            "--storage",
            str(tmp_path / "runs"),
            "--name",
            "tracked",
            "--address",
            ray_address,
        ],
        cwd=tmp_path,
    )
    assert killed.returncode == -9
    monkeypatch.delenv("VISIONSWEEP_FAULTS")
    resumed = run_cli(["--resume", str(experiment), "--address", ray_address], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for output in (killed.stdout, killed.stderr, resumed.stdout, resumed.stderr):
        assert "s3cret-pw" not in output
    for path in experiment.rglob("*"):
        if path.is_file():
            assert b"s3cret-pw" not in path.read_bytes(), path
    assert "someone:***@" in (experiment / "sweep.json").read_text()

    client = MlflowClient(mlflow_server)
    parent = read_back(client, "colours", experiment, epochs=3)
    assert parent.data.params["arg.space"] == "single"
    assert "s3cret-pw" not in str(parent.data.params)
    assert parent.data.params["arg.tracking"].startswith("http://someone:***@")
    # what report.py makes joins the sweep's run (its URI without the masked password)
    from sweeps import report

    assert report.main([str(experiment), "--latency-rounds", "1"]) == 0
    assert "report" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_a_tracking_server_that_goes_away_costs_the_tracking_not_the_sweep(
    mlflow_server, tmp_path, capsys
):
    from sweeps.driver.recorder import TrialEntry
    from sweeps.experiment.storage import Store
    from sweeps.sinks.tracking import Tracking

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


def test_a_deleted_tracking_experiment_is_refused_before_any_work(mlflow_server, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    deleted = client.create_experiment("binned")
    client.delete_experiment(deleted)
    result = run_cli(
        [
            "--space",
            "single",
            "--smoke",
            "--tracking",
            mlflow_server,
            "--tracking-experiment",
            "binned",
            "--storage",
            str(tmp_path / "runs"),
            "--name",
            "x",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --tracking-experiment binned: that MLflow experiment was deleted (its name "
        f"stays taken); restore it (mlflow experiments restore --experiment-id {deleted}) or "
        "choose another name"
    )
    assert not (tmp_path / "runs").exists()


def test_a_sweep_tracked_on_a_postgresql_backed_mlflow_server(postgres, tmp_path, ray_address):
    """Where a team keeps its runs: MLflow over PostgreSQL, read back as with SQLite, and
    the runs found in PostgreSQL's own tables."""
    import psycopg
    from mlflow.tracking import MlflowClient

    server, uri = start_mlflow(tmp_path, postgres)
    try:
        data = make_image_folder(tmp_path / "imgs", per_class=10)
        result = run_cli(
            [
                "--space",
                "single",
                "--set",
                "model=small_cnn",
                "--set",
                "image_size=16",
                "--set",
                "early_stop_patience=0",
                "--data",
                str(data),
                "--max-epochs",
                "2",
                "--num-samples",
                "2",
                "--scheduler",
                "fifo",
                "--tracking",
                uri,
                "--address",
                ray_address,
                "--storage",
                str(tmp_path / "runs"),
                "--name",
                "pg",
            ],
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        parent = read_back(MlflowClient(uri), "single", tmp_path / "runs" / "pg", epochs=2)
        with psycopg.connect(postgres) as db:
            names = dict(db.execute("SELECT run_uuid, name FROM runs").fetchall())
        assert len(names) == 3 and names[parent.info.run_id] == parent.info.run_name
    finally:
        server.terminate()
        server.wait(timeout=30)
