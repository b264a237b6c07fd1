"""What clusters do to long sweeps, done for real: a trial's worker killed with SIGKILL, the
driver killed mid-sweep and resumed."""
import os
import signal
import time
from pathlib import Path

import pandas as pd

from conftest import make_image_folder, run_cli, start_cli

# long enough per trial to be caught mid-way, small enough for CI
SLOW_TRIAL = ["--space", "single", "--set", "model=small_cnn", "--set", "image_size=32",
              "--set", "early_stop_patience=0", "--set", "chance_epochs=0",
              "--set", "batch_size=8"]


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _progress(trial_dir: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(trial_dir / "progress.csv")
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame()


def _trial_dirs(experiment: Path) -> list[Path]:
    return sorted(p for p in experiment.glob("small_cnn_s*") if p.is_dir())


def test_a_killed_trial_worker_is_retried_from_its_checkpoint(tmp_path):
    data = make_image_folder(tmp_path / "imgs", per_class=30)
    experiment = tmp_path / "runs" / "kill"
    driver = start_cli([*SLOW_TRIAL, "--data", str(data), "--max-epochs", "12",
                        "--storage", str(tmp_path / "runs"), "--name", "kill"],
                       cwd=tmp_path, log=tmp_path / "driver.log")
    try:
        def worker_after_three_epochs():
            dirs = _trial_dirs(experiment)
            progress = _progress(dirs[0]) if dirs else pd.DataFrame()
            return int(progress["pid"].iloc[-1]) if len(progress) >= 3 else None

        pid = _wait_for(worker_after_three_epochs, 240, "three epochs")
        os.kill(pid, signal.SIGKILL)  # the trial's worker process, as a dying node would
        assert driver.wait(timeout=300) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        driver.kill()
    table = pd.read_csv(experiment / "results.csv")
    assert len(table) == 1
    row = table.iloc[0]
    assert row["retries"] == 1 and row["epochs"] == 12 and row["stop_reason"] == "completed"
    epochs = _progress(_trial_dirs(experiment)[0])["epoch"].tolist()
    assert sorted(set(epochs)) == list(range(1, 13))  # every epoch, none skipped
    assert epochs[-1] == 12


def test_a_killed_driver_resumes_without_losing_or_repeating_a_trial(tmp_path):
    data = make_image_folder(tmp_path / "imgs", per_class=30)
    experiment = tmp_path / "runs" / "crash"
    args = [*SLOW_TRIAL, "--data", str(data), "--max-epochs", "10", "--num-samples", "3",
            "--max-concurrent", "1", "--storage", str(tmp_path / "runs"), "--name", "crash"]
    driver = start_cli(args, cwd=tmp_path, log=tmp_path / "first.log")
    try:
        # wait until one trial is finished and the next one is under way
        _wait_for(lambda: (experiment / "results.csv").exists()
                  and len(_trial_dirs(experiment)) >= 2
                  and len(_progress(_trial_dirs(experiment)[1])) >= 2, 300, "a trial in flight")
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
    finally:
        driver.kill()
    finished_before = pd.read_csv(experiment / "results.csv")
    assert len(finished_before) == 1  # the table kept the finished trial's row
    first = finished_before.iloc[0]
    first_dir = next(d for d in _trial_dirs(experiment) if d.name.endswith(first["trial_id"]))
    first_epochs = len(_progress(first_dir))

    resumed = run_cli(["--resume", str(experiment)], cwd=tmp_path, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    table = pd.read_csv(experiment / "results.csv")
    assert len(table) == 3 and table["trial_id"].is_unique
    assert sorted(table["seed"]) == [0, 1, 2]
    again = table.set_index("trial_id").loc[first["trial_id"]]
    assert again["epochs"] == first["epochs"] and again["test_acc"] == first["test_acc"]
    assert len(_progress(first_dir)) == first_epochs  # the finished trial did not run again
    for trial_dir in _trial_dirs(experiment):
        epochs = _progress(trial_dir)["epoch"].tolist()
        assert epochs == list(range(1, len(epochs) + 1)), (trial_dir.name, epochs)


def test_resume_refuses_what_it_cannot_resume(tmp_path):
    result = run_cli(["--resume", str(tmp_path / "nothing")], cwd=tmp_path)
    assert result.returncode == 2 and "no sweep.json there" in result.stderr
    result = run_cli(["--resume", str(tmp_path), "--space", "single"], cwd=tmp_path)
    assert result.returncode == 2 and "--resume conflicts with --space" in result.stderr
    result = run_cli(["--space", "single", "--retry-errored"], cwd=tmp_path)
    assert result.returncode == 2 and "only works with --resume" in result.stderr
