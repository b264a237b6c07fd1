"""What people, schedulers and disks do to a long sweep's driver, done for real at a chosen
moment (trainables/core/faults.py): the driver killed, Ctrl-C and SIGTERM, a full disk, two
sweeps of one name. Each ends as the README promises: nothing finished is lost, and --resume
completes the sweep."""

import os
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from faults_support import (
    SLOW_TRIAL,
    digests,
    live_ray_processes,
    no_leftovers,
    progress,
    resume_completes,
    trial_dirs,
    with_fault,
)
from helpers import make_image_folder, run_cli, start_cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("faults") / "imgs", per_class=30)


def test_a_killed_driver_leaves_no_ray_behind_and_resumes_without_losing_or_repeating_a_trial(
    images, tmp_path, monkeypatch, ray_address
):
    with_fault(monkeypatch, "kill_driver_after=1")
    experiment = tmp_path / "runs" / "crash"
    args = [
        *SLOW_TRIAL,
        "--data",
        str(images),
        "--max-epochs",
        "4",
        "--num-samples",
        "3",
        "--max-concurrent",
        "1",
        "--storage",
        str(tmp_path / "runs"),
        "--name",
        "crash",
    ]
    mark = f"VISIONSWEEP_TEST_MARK={os.getpid()}-{time.monotonic_ns()}"
    monkeypatch.setenv(*mark.split("=", 1))  # the driver's Ray processes inherit it
    before = live_ray_processes(mark)
    killed = start_cli(args, tmp_path, tmp_path / "killed.log")
    seen = set()  # the local Ray instance it starts, carrying the mark: what must not outlive it
    while killed.poll() is None:
        seen |= live_ray_processes(mark) - before
        time.sleep(0.5)
    assert killed.returncode == -9  # SIGKILL, the second trial running: no chance to clean up
    assert seen, (tmp_path / "killed.log").read_text()[-3000:]
    # its raylet's agents outlive the driver at first; the watchdog stops them within seconds
    deadline = time.monotonic() + 60
    while live_ray_processes(mark) - before and time.monotonic() < deadline:
        time.sleep(1)
    assert not live_ray_processes(mark) - before
    finished_before = pd.read_csv(experiment / "results.csv", dtype={"trial_id": str})
    assert len(finished_before) == 1  # the table kept the finished trial's row
    first = finished_before.iloc[0]
    first_dir = next(d for d in trial_dirs(experiment) if d.name.endswith(first["trial_id"]))
    first_pids = progress(first_dir)["pid"].tolist()

    # the images changed meanwhile (one added; one rewritten): refused in one line
    red = sorted((images / "red").glob("*.png"))
    original = red[0].read_bytes()
    for change in ("added", "rewritten"):
        if change == "added":
            (images / "red" / "late.png").write_bytes(original)
        else:
            red[0].write_bytes(red[1].read_bytes())
        try:
            refused = run_cli(["--resume", str(experiment)], cwd=tmp_path)
        finally:
            (images / "red" / "late.png").unlink(missing_ok=True)
            red[0].write_bytes(original)
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert "changed since the sweep began" in refused.stderr.strip().splitlines()[-1]

    table = resume_completes(experiment, tmp_path, 3, monkeypatch, ray_address)
    assert sorted(table["seed"]) == [0, 1, 2]
    again = table.set_index("trial_id").loc[first["trial_id"]]
    assert again["epochs"] == first["epochs"] and again["test_acc"] == first["test_acc"]
    assert progress(first_dir)["pid"].tolist() == first_pids  # it did not run again


@pytest.mark.parametrize(
    "fault, code, name",
    [
        ("interrupt_driver_after=1", 130, "SIGINT"),
        ("terminate_driver_after=1", 143, "SIGTERM"),
        ("terminate_group_after=1", 143, "SIGTERM"),
    ],
)
def test_ctrl_c_and_sigterm_stop_cleanly_mark_unfinished_trials_and_resume(
    images, tmp_path, monkeypatch, fault, code, name, ray_address
):
    # terminate_group: SIGTERM to the driver's whole process group, as `timeout` or systemd
    # stop a job; the local Ray instance the driver started must not be stopped by it first
    with_fault(monkeypatch, fault)
    experiment = tmp_path / "runs" / "stop"
    args = [
        *SLOW_TRIAL,
        "--data",
        str(images),
        "--max-epochs",
        "3",
        "--num-samples",
        "3",
        "--max-concurrent",
        "1",
        "--scheduler",
        "fifo",
        "--storage",
        str(tmp_path / "runs"),
        "--name",
        "stop",
    ]
    stopped = run_cli(args, cwd=tmp_path, own_group=True)
    assert stopped.returncode == code, stopped.stderr[-3000:]
    assert f"interrupted ({name}): 2 of 3 trial(s) unfinished" in stopped.stderr
    assert f"python sweeps/run.py --resume '{experiment}'" in stopped.stderr
    assert "stopping the sweep" in stopped.stderr  # the driver's line, not Tune's twin
    assert "Stop signal received" not in stopped.stderr and "Tuner.restore" not in stopped.stderr
    table = pd.read_csv(experiment / "results.csv")
    # every planned trial has a row, also the one Tune had not made yet (one trial at a
    # time), and only the finished one says finished
    assert len(table) == 3 and sorted(table["seed"]) == [0, 1, 2]
    done = table[table["stop_reason"] == "completed"]
    assert len(done) == 1 and (done["epochs"] == 3).all()
    unfinished = table[table["stop_reason"] != "completed"]
    assert len(unfinished) == 2 and (unfinished["stop_reason"] == "unfinished").all()
    assert set(unfinished["status"]) <= {"INTERRUPTED", "NOT_STARTED"}
    assert "INTERRUPTED" in set(unfinished["status"])  # the one in flight when it stopped
    no_leftovers(experiment)
    if name == "SIGINT":  # resumed as a copy (moved to another disk, shared, backed up)
        copy = tmp_path / "elsewhere" / "stop"
        shutil.copytree(experiment, copy, symlinks=True)
        before = digests(experiment)
        resume_completes(copy, tmp_path, 3, monkeypatch, ray_address)
        assert digests(experiment) == before  # the original is not touched


def test_ctrl_c_with_trials_made_but_not_started_prints_no_tune_warning_about_them(
    images, tmp_path, monkeypatch
):
    """A grid whose trials Tune makes at once but runs one at a time (each takes every
    CPU), stopped with Ctrl-C after the first: Tune's end-of-run warning about the trials
    it never started (no metrics to read back) is not printed; they are unfinished rows
    of the table."""
    with_fault(monkeypatch, "interrupt_driver_after=1")
    args = [
        *SLOW_TRIAL,
        "--set",
        "lr=[0.001,0.002,0.003]",
        "--cpus-per-trial",
        str(os.cpu_count()),
        "--data",
        str(images),
        "--max-epochs",
        "3",
        "--scheduler",
        "fifo",
        "--storage",
        str(tmp_path / "runs"),
        "--name",
        "made",
    ]
    stopped = run_cli(args, cwd=tmp_path)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    table = pd.read_csv(tmp_path / "runs" / "made" / "results.csv")
    assert "NOT_STARTED" in set(table["status"])  # made by Tune, never started
    assert "Failed to fetch metrics" not in stopped.stderr, stopped.stderr[-3000:]
    assert "interrupted (SIGINT): 2 of 3 trial(s) unfinished" in stopped.stderr


def test_a_full_disk_stops_the_sweep_in_one_line_and_resume_completes_it(
    images, tmp_path, monkeypatch, ray_address
):
    experiment = tmp_path / "runs" / "full"
    args = [
        *SLOW_TRIAL,
        "--data",
        str(images),
        "--max-epochs",
        "3",
        "--num-samples",
        "3",
        "--max-concurrent",
        "1",
        "--storage",
        str(tmp_path / "runs"),
        "--name",
        "full",
    ]
    # the sweep's own files (marker, split, data report, sweep.json), the first trial's
    # three epochs and its table (results.csv, results.md): then the disk is full
    with_fault(monkeypatch, "disk_full_after=11")
    full = run_cli(args, cwd=tmp_path)
    assert full.returncode == 1, full.stderr[-3000:]
    error = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "No space left on device" in error[0], full.stderr[-3000:]
    assert f"--resume '{experiment}'" in error[0] and "Traceback" not in full.stderr
    table = pd.read_csv(experiment / "results.csv")
    assert list(table["stop_reason"]) == ["completed"]  # the last good table, whole
    no_leftovers(experiment)
    resume_completes(experiment, tmp_path, 3, monkeypatch, ray_address)


def test_resume_refuses_what_it_cannot_resume(tmp_path):
    result = run_cli(["--resume", str(tmp_path / "nothing")], cwd=tmp_path)
    assert result.returncode == 2 and "no sweep.json there" in result.stderr
    result = run_cli(["--resume", str(tmp_path), "--space", "single"], cwd=tmp_path)
    assert result.returncode == 2 and "--resume conflicts with --space" in result.stderr
    result = run_cli(["--space", "single", "--retry-errored"], cwd=tmp_path)
    assert result.returncode == 2 and "only works with --resume" in result.stderr
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "sweep.json").write_text('{"args": {"space": "sin')
    result = run_cli(["--resume", str(tmp_path / "damaged")], cwd=tmp_path)
    assert result.returncode == 2 and "sweep.json is damaged" in result.stderr


def test_two_sweeps_of_one_name_started_together_one_runs_one_is_refused(
    images, tmp_path, ray_address
):
    args = [
        *SLOW_TRIAL,
        "--data",
        str(images),
        "--max-epochs",
        "2",
        "--num-samples",
        "2",
        "--storage",
        str(tmp_path / "runs"),
        "--name",
        "same",
        "--address",
        ray_address,
    ]
    drivers = [start_cli(args, cwd=tmp_path, log=tmp_path / f"driver{i}.log") for i in (0, 1)]
    codes = sorted(driver.wait(timeout=300) for driver in drivers)
    logs = [(tmp_path / f"driver{i}.log").read_text() for i in (0, 1)]
    assert codes == [0, 2], logs
    refused = next(log for log in logs if "error: " in log)
    error = [line for line in refused.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and (
        "in use by a running sweep" in error[0] or "already exists" in error[0]
    ), error
    table = pd.read_csv(tmp_path / "runs" / "same" / "results.csv")
    assert len(table) == 2 and table["trial_id"].is_unique  # one sweep's trials, whole
    assert sorted(table["seed"]) == [0, 1]


def test_resume_replays_the_experiments_own_split_not_the_file_it_was_started_with(tmp_path):
    """A sweep started with --split-file resumes on its own split.csv: the external file
    may have changed (trials of one experiment would be tested on other images) or gone."""
    import json

    from sweeps.driver.spec import SweepSpec, resumed

    experiment = tmp_path / "runs" / "reused"
    experiment.mkdir(parents=True)
    (experiment / "split.csv").write_text("path,class,label,split\n")
    (experiment / "sweep.json").write_text(
        json.dumps(
            {
                "args": {"space": "single", "split_file": str(tmp_path / "elsewhere.csv")},
                "presplit": True,
            }
        )
    )
    spec = resumed(SweepSpec(resume=str(experiment)))
    assert spec.split_file == f"{experiment}/split.csv"


def test_a_trial_retried_after_an_error_is_counted_done_once(capsys):
    # --retry-errored runs again a trial the restored state already counts as ended
    from sweeps.sinks.base import TrialEntry
    from sweeps.sinks.progress import ProgressLines

    lines = ProgressLines(3)
    lines.resumed(["a", "b"])  # "b" had failed
    retried = TrialEntry("b", "v", {}, "", status="TERMINATED", stop_reason="completed")
    lines.end(retried)
    lines.end(TrialEntry("c", "v", {}, "", status="TERMINATED", stop_reason="completed"))
    out = capsys.readouterr().out.splitlines()
    assert [line.split("] ")[0].split()[-2] for line in out] == ["2/3", "3/3"]
