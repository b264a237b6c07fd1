"""What clusters, disks and people do to long sweeps, done for real at a chosen moment
(trainables/faults.py): a trial's worker killed with SIGKILL, the driver killed, Ctrl-C and
SIGTERM, a full disk. Each ends as the README promises: nothing finished is lost, and
--resume completes the sweep."""
import hashlib
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import make_image_folder, run_cli

# long enough per trial to be stopped mid-way, small enough for CI
SLOW_TRIAL = ["--space", "single", "--set", "model=small_cnn", "--set", "image_size=32",
              "--set", "early_stop_patience=0", "--set", "chance_epochs=0",
              "--set", "batch_size=8"]


def _progress(trial_dir: Path) -> pd.DataFrame:
    return pd.read_csv(trial_dir / "progress.csv")


def _trial_dirs(experiment: Path) -> list[Path]:
    return sorted(p for p in experiment.glob("small_cnn_s*") if p.is_dir())


def _with_fault(monkeypatch, fault: str) -> None:
    monkeypatch.setenv("VISIONSWEEP_FAULTS", fault)


def _no_leftovers(experiment: Path) -> None:
    """No half-written files: no temp files, no empty files among ours."""
    for path in experiment.rglob("*"):
        assert not path.name.endswith(".tmp"), path
        if path.is_file() and path.suffix in (".csv", ".json", ".md"):
            assert path.stat().st_size > 0, path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("faults") / "imgs", per_class=30)


def test_a_killed_trial_worker_is_retried_from_its_checkpoint(images, tmp_path, monkeypatch):
    """With a checkpoint every epoch, the retry goes on exactly after the lost epoch."""
    _with_fault(monkeypatch, "kill_worker_at_epoch=3")
    result = run_cli([*SLOW_TRIAL, "--data", str(images), "--max-epochs", "6",
                      "--set", "checkpoint_budget=0", "--storage", str(tmp_path / "runs"),
                      "--name", "kill"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    experiment = tmp_path / "runs" / "kill"
    row = pd.read_csv(experiment / "results.csv").iloc[0]
    assert row["retries"] == 1 and row["epochs"] == 6 and row["stop_reason"] == "completed"
    progress = _progress(_trial_dirs(experiment)[0])
    assert progress["epoch"].tolist() == list(range(1, 7))  # every epoch once, none lost
    # epochs 1-3 are the first worker's, 4-6 the retry's: it went on from its checkpoint
    pids = progress["pid"].tolist()
    assert pids[:3] == [pids[0]] * 3 and pids[3:] == [pids[3]] * 3 and pids[0] != pids[3]


def test_a_stalled_trial_is_warned_about_then_stopped_and_tabled(images, tmp_path,
                                                                  monkeypatch):
    """A worker that stops (SIGSTOP, as a stuck read or a deadlocked GPU would leave it) after
    epoch 2: the driver warns, stops it after --stall-timeout, and tables it as stalled. (With
    retries left, Tune retries it from its checkpoint, as a lost worker: see the test above.)"""
    _with_fault(monkeypatch, "stall_worker_at_epoch=2")
    common = [*SLOW_TRIAL, "--data", str(images), "--max-epochs", "4", "--stall-timeout", "12",
              "--set", "checkpoint_budget=0", "--storage", str(tmp_path / "runs")]
    result = run_cli([*common, "--max-failures", "0", "--name", "stall"], cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]  # a failed trial: exit 1
    warned = [line for line in result.stderr.splitlines() if "has reported nothing" in line]
    assert warned and "--stall-timeout" in warned[0], result.stderr[-3000:]
    row = pd.read_csv(tmp_path / "runs" / "stall" / "results.csv").iloc[0]
    assert row["stop_reason"] == "stalled" and row["epochs"] == 2, row.to_dict()
    assert "no report for" in row["error"] and "--stall-timeout 12" in row["error"]
    assert "stalled (reported nothing for --stall-timeout" in result.stdout
    _no_leftovers(tmp_path / "runs" / "stall")


def _live_ray_processes(mark: str) -> set[int]:
    """Processes Ray started (named ray::...) that still run (zombies are dead) and carry
    ``mark`` in their environment: this test's own, not those of tests running beside it
    (pytest-xdist's other worker), which would come and go in a machine-wide count."""
    found = set()
    needle = mark.encode()
    for entry in Path("/proc").iterdir():
        try:
            name = (entry / "cmdline").read_bytes().split(b"\0")[0]
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if name.startswith(b"ray::") and state != "Z" \
                    and needle in (entry / "environ").read_bytes().split(b"\0"):
                found.add(int(entry.name))
        except (OSError, IndexError):
            continue
    return found


def _resume_completes(experiment: Path, cwd: Path, trials: int, monkeypatch) -> pd.DataFrame:
    monkeypatch.delenv("VISIONSWEEP_FAULTS")
    resumed = run_cli(["--resume", str(experiment)], cwd=cwd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    table = pd.read_csv(experiment / "results.csv", dtype={"trial_id": str})
    assert len(table) == trials and table["trial_id"].is_unique
    assert (table["stop_reason"] == "completed").all(), table
    for trial_dir in _trial_dirs(experiment):
        epochs = _progress(trial_dir)["epoch"].tolist()
        assert epochs == list(range(1, len(epochs) + 1)), (trial_dir.name, epochs)
    return table


def test_a_killed_driver_leaves_no_ray_behind_and_resumes_without_losing_or_repeating_a_trial(
        images, tmp_path, monkeypatch):
    _with_fault(monkeypatch, "kill_driver_after=1")
    experiment = tmp_path / "runs" / "crash"
    args = [*SLOW_TRIAL, "--data", str(images), "--max-epochs", "4", "--num-samples", "3",
            "--max-concurrent", "1", "--storage", str(tmp_path / "runs"), "--name", "crash"]
    mark = f"VISIONSWEEP_TEST_MARK={os.getpid()}-{time.monotonic_ns()}"
    monkeypatch.setenv(*mark.split("=", 1))  # the driver's Ray processes inherit it
    before = _live_ray_processes(mark)
    killed = run_cli(args, cwd=tmp_path)
    assert killed.returncode == -9  # SIGKILL, the second trial running: no chance to clean up
    # the local Ray instance it started (the raylet's agents outlive the driver at first) is
    # stopped by the watchdog within seconds
    assert _live_ray_processes(mark) - before
    deadline = time.monotonic() + 60
    while _live_ray_processes(mark) - before and time.monotonic() < deadline:
        time.sleep(1)
    assert not _live_ray_processes(mark) - before
    finished_before = pd.read_csv(experiment / "results.csv", dtype={"trial_id": str})
    assert len(finished_before) == 1  # the table kept the finished trial's row
    first = finished_before.iloc[0]
    first_dir = next(d for d in _trial_dirs(experiment) if d.name.endswith(first["trial_id"]))
    first_pids = _progress(first_dir)["pid"].tolist()

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

    table = _resume_completes(experiment, tmp_path, 3, monkeypatch)
    assert sorted(table["seed"]) == [0, 1, 2]
    again = table.set_index("trial_id").loc[first["trial_id"]]
    assert again["epochs"] == first["epochs"] and again["test_acc"] == first["test_acc"]
    assert _progress(first_dir)["pid"].tolist() == first_pids  # it did not run again


@pytest.mark.parametrize("fault, code, name", [("interrupt_driver_after=1", 130, "SIGINT"),
                                               ("terminate_driver_after=1", 143, "SIGTERM"),
                                               ("terminate_group_after=1", 143, "SIGTERM")])
def test_ctrl_c_and_sigterm_stop_cleanly_mark_unfinished_trials_and_resume(
        images, tmp_path, monkeypatch, fault, code, name):
    # terminate_group: SIGTERM to the driver's whole process group, as `timeout` or systemd
    # stop a job; the local Ray instance the driver started must not be stopped by it first
    _with_fault(monkeypatch, fault)
    experiment = tmp_path / "runs" / "stop"
    args = [*SLOW_TRIAL, "--data", str(images), "--max-epochs", "3", "--num-samples", "3",
            "--max-concurrent", "1", "--scheduler", "fifo", "--storage",
            str(tmp_path / "runs"), "--name", "stop"]
    stopped = run_cli(args, cwd=tmp_path, own_group=True)
    assert stopped.returncode == code, stopped.stderr[-3000:]
    assert f"interrupted ({name}): 2 of 3 trial(s) unfinished" in stopped.stderr
    assert f"python sweeps/run.py --resume '{experiment}'" in stopped.stderr
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
    _no_leftovers(experiment)
    if name == "SIGINT":  # resumed as a copy (moved to another disk, shared, backed up)
        copy = tmp_path / "elsewhere" / "stop"
        shutil.copytree(experiment, copy, symlinks=True)
        before = _digests(experiment)
        _resume_completes(copy, tmp_path, 3, monkeypatch)
        assert _digests(experiment) == before  # the original is not touched


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


def test_a_full_disk_stops_the_sweep_in_one_line_and_resume_completes_it(images, tmp_path,
                                                                         monkeypatch):
    experiment = tmp_path / "runs" / "full"
    args = [*SLOW_TRIAL, "--data", str(images), "--max-epochs", "3", "--num-samples", "3",
            "--max-concurrent", "1", "--storage", str(tmp_path / "runs"), "--name", "full"]
    # the sweep's own files (marker, split, data report, sweep.json), the first trial's
    # three epochs and its table (results.csv, results.md): then the disk is full
    _with_fault(monkeypatch, "disk_full_after=11")
    full = run_cli(args, cwd=tmp_path)
    assert full.returncode == 1, full.stderr[-3000:]
    error = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "No space left on device" in error[0], full.stderr[-3000:]
    assert f"--resume '{experiment}'" in error[0] and "Traceback" not in full.stderr
    table = pd.read_csv(experiment / "results.csv")
    assert list(table["stop_reason"]) == ["completed"]  # the last good table, whole
    _no_leftovers(experiment)
    _resume_completes(experiment, tmp_path, 3, monkeypatch)


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


def test_two_sweeps_of_one_name_started_together_one_runs_one_is_refused(images, tmp_path):
    from conftest import start_cli

    args = [*SLOW_TRIAL, "--data", str(images), "--max-epochs", "2", "--num-samples", "2",
            "--storage", str(tmp_path / "runs"), "--name", "same"]
    drivers = [start_cli(args, cwd=tmp_path, log=tmp_path / f"driver{i}.log") for i in (0, 1)]
    codes = sorted(driver.wait(timeout=300) for driver in drivers)
    logs = [(tmp_path / f"driver{i}.log").read_text() for i in (0, 1)]
    assert codes == [0, 2], logs
    refused = next(log for log in logs if "error: " in log)
    error = [line for line in refused.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and ("in use by a running sweep" in error[0]
                                or "already exists" in error[0]), error
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
    (experiment / "sweep.json").write_text(json.dumps({
        "args": {"space": "single", "split_file": str(tmp_path / "elsewhere.csv")},
        "presplit": True}))
    spec = resumed(SweepSpec(resume=str(experiment)))
    assert spec.split_file == f"{experiment}/split.csv"


def test_a_trial_tune_marks_error_without_an_error_event_is_tabled_as_error(tmp_path):
    """A trial whose start failed: Tune marks it ERROR but calls no callback for it. It is a
    failed trial (error, its message, exit status 1), not one that is yet to start."""
    from types import SimpleNamespace

    from sweeps.driver.recorder import TrialRecorder
    from sweeps.experiment.storage import Store

    store = Store.from_location(str(tmp_path / "x"))
    recorder = TrialRecorder(lambda config: "v", store, [], sinks=[], scheduler_stop="asha")
    error = tmp_path / "error.txt"
    error.write_text("Traceback (most recent call last):\nRuntimeError: the actor did not start\n")
    trial = SimpleNamespace(trial_id="t1", config={}, local_path=tmp_path / "t1",
                            checkpoint=None, status="ERROR", error_file=str(error))
    recorder.on_experiment_end([trial])
    row = pd.read_csv(tmp_path / "x" / "results.csv").iloc[0]
    assert (row["status"], row["stop_reason"]) == ("ERROR", "error")
    assert row["error"] == "RuntimeError: the actor did not start"


def test_a_failed_reuse_of_a_worker_does_not_hang_the_sweep(images, tmp_path, monkeypatch):
    """Tune hands a finished trial's worker to the next trial once its thread has ended;
    told to wait 0 s for that, the reuse fails. Tune then ends that trial as ERROR without
    telling anyone, and with --max-concurrent 1 it would wait for a free slot forever: the
    sweep must end, every trial tabled, the failed one with the reason."""
    monkeypatch.setenv("TUNE_FUNCTION_THREAD_TIMEOUT_S", "0")
    result = run_cli([*SLOW_TRIAL, "--data", str(images), "--max-epochs", "2",
                      "--num-samples", "3", "--max-concurrent", "1", "--storage",
                      str(tmp_path / "runs"), "--name", "reuse"], cwd=tmp_path, timeout=240)
    assert result.returncode == 1, result.stderr[-3000:]  # failed trials, not a hang
    table = pd.read_csv(tmp_path / "runs" / "reuse" / "results.csv")
    assert len(table) == 3 and sorted(table["seed"]) == [0, 1, 2]
    failed = table[table["stop_reason"] == "error"]
    assert len(failed) >= 1 and failed["error"].str.startswith("Tune could not hand").all()
    assert set(table["stop_reason"]) <= {"completed", "error"}


def _memory_cgroup(tmp_name: str, limit: str) -> Path | None:
    """A cgroup (v1 memory hierarchy) with a memory limit, or None where none can be made."""
    base = Path("/sys/fs/cgroup/memory")
    if not (base / "cgroup.procs").exists() or not os.access(base, os.W_OK):
        return None
    group = base / tmp_name
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(limit)
    except OSError:
        return None
    return group


def test_a_trial_the_kernel_kills_for_memory_is_tabled_as_oom(images, tmp_path, monkeypatch):
    """A real out-of-memory kill: the sweep runs in a memory cgroup of 2.5 GB, and a trial's
    worker takes memory after epoch 1 until the kernel kills it. Its row says oom and what
    to do, not error."""
    import subprocess
    import sys

    from conftest import ROOT

    group = _memory_cgroup(f"visionsweep-test-{os.getpid()}", "2500M")
    if group is None:
        pytest.skip("needs a writable cgroup v1 memory hierarchy (root)")
    _with_fault(monkeypatch, "hog_memory_at_epoch=1")
    command = [sys.executable, str(ROOT / "sweeps" / "run.py"), *SLOW_TRIAL, "--data",
               str(images), "--max-epochs", "3", "--max-failures", "0", "--storage",
               str(tmp_path / "runs"), "--name", "oom"]
    try:
        done = subprocess.run(["bash", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"',
                               "bash", *command], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300,
                              env=dict(os.environ, PYTHONWARNINGS="ignore"))
    finally:
        for _ in range(120):  # the local Ray's processes leave it within seconds
            if not (group / "cgroup.procs").read_text().strip():
                break
            time.sleep(0.5)
        group.rmdir()
    assert done.returncode == 1, done.stderr[-3000:]
    row = pd.read_csv(tmp_path / "runs" / "oom" / "results.csv").iloc[0]
    assert (row["status"], row["stop_reason"]) == ("ERROR", "oom"), row.to_dict()
    assert row["error"].startswith("killed for lack of memory") and "batch_size" in row["error"]
