"""What happens to a trial's worker, done for real at a chosen moment (trainables/core/faults.py):
killed with SIGKILL, stopped (SIGSTOP), killed for memory in a real memory cgroup, handed to
the next trial too early, or failing to start. Each ends as the README promises: retried, or
tabled with its reason, and the sweep goes on."""

import os
import time
from pathlib import Path

import pandas as pd
import pytest

from faults_support import SLOW_TRIAL, no_leftovers, progress, trial_dirs, with_fault
from helpers import make_image_folder, run_cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("faults") / "imgs", per_class=30)


def test_a_killed_trial_worker_is_retried_from_its_checkpoint(images, tmp_path, monkeypatch):
    """With a checkpoint every epoch, the retry goes on exactly after the lost epoch."""
    with_fault(monkeypatch, "kill_worker_at_epoch=3")
    result = run_cli(
        [
            *SLOW_TRIAL,
            "--data",
            str(images),
            "--max-epochs",
            "6",
            "--set",
            "checkpoint_budget=0",
            "--storage",
            str(tmp_path / "runs"),
            "--name",
            "kill",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    experiment = tmp_path / "runs" / "kill"
    row = pd.read_csv(experiment / "results.csv").iloc[0]
    assert row["retries"] == 1 and row["epochs"] == 6 and row["stop_reason"] == "completed"
    epochs = progress(trial_dirs(experiment)[0])
    assert epochs["epoch"].tolist() == list(range(1, 7))  # every epoch once, none lost
    # epochs 1-3 are the first worker's, 4-6 the retry's: it went on from its checkpoint
    pids = epochs["pid"].tolist()
    assert pids[:3] == [pids[0]] * 3 and pids[3:] == [pids[3]] * 3 and pids[0] != pids[3]


def test_a_stalled_trial_is_warned_about_then_stopped_and_tabled(images, tmp_path, monkeypatch):
    """A worker that stops (SIGSTOP, as a stuck read or a deadlocked GPU would leave it) after
    epoch 1: the driver warns, stops it after --stall-timeout, and tables it as stalled. (With
    retries left, Tune retries it from its checkpoint, as a lost worker: see the test above.)"""
    with_fault(monkeypatch, "stall_worker_at_epoch=1")
    common = [
        *SLOW_TRIAL,
        "--data",
        str(images),
        "--max-epochs",
        "2",
        "--stall-timeout",
        "12",
        "--set",
        "checkpoint_budget=0",
        "--storage",
        str(tmp_path / "runs"),
    ]
    result = run_cli([*common, "--max-failures", "0", "--name", "stall"], cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]  # a failed trial: exit 1
    warned = [line for line in result.stderr.splitlines() if "has reported nothing" in line]
    assert warned and "--stall-timeout" in warned[0], result.stderr[-3000:]
    row = pd.read_csv(tmp_path / "runs" / "stall" / "results.csv").iloc[0]
    assert row["stop_reason"] == "stalled" and row["epochs"] == 1, row.to_dict()
    assert "no report for" in row["error"] and "--stall-timeout 12" in row["error"]
    assert "stalled (reported nothing for --stall-timeout" in result.stdout
    no_leftovers(tmp_path / "runs" / "stall")


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
    trial = SimpleNamespace(
        trial_id="t1",
        config={},
        local_path=tmp_path / "t1",
        checkpoint=None,
        status="ERROR",
        error_file=str(error),
    )
    recorder.on_experiment_end([trial])
    row = pd.read_csv(tmp_path / "x" / "results.csv").iloc[0]
    assert (row["status"], row["stop_reason"]) == ("ERROR", "error")
    assert row["error"] == "RuntimeError: the actor did not start"


def test_a_sweep_begun_in_the_same_process_does_not_inherit_the_last_ones_recorder(tmp_path):
    """A notebook runs two sweeps in one process: the second driver must not take the
    first one's failed recorder for its own (its storage fault would then hide the second
    sweep's own error), nor tell the first one's searcher of its trials."""
    from sweeps.driver import recorder as rec
    from sweeps.experiment.storage import Store

    first = Store.from_location(str(tmp_path / "first"))
    rec.begin_sweep(first)
    failed = rec.TrialRecorder(lambda config: "v", first, [], sinks=[], scheduler_stop="asha")
    failed.setup()
    failed.fault = "No space left on device"
    rec.know_searcher(object())
    assert rec.active() is failed and rec.THIS_SWEEP.store is first

    second = Store.from_location(str(tmp_path / "second"))
    rec.begin_sweep(second)
    assert rec.active() is None
    assert rec.THIS_SWEEP.searcher is None and rec.THIS_SWEEP.store is second


def test_a_failed_reuse_of_a_worker_does_not_hang_the_sweep(images, tmp_path, monkeypatch):
    """Tune hands a finished trial's worker to the next trial once its thread has ended;
    told to wait 0 s for that, the reuse fails. Tune then ends that trial as ERROR without
    telling anyone, and with --max-concurrent 1 it would wait for a free slot forever: the
    sweep must end, every trial tabled, the failed one with the reason."""
    monkeypatch.setenv("TUNE_FUNCTION_THREAD_TIMEOUT_S", "0")
    result = run_cli(
        [
            *SLOW_TRIAL,
            "--data",
            str(images),
            "--max-epochs",
            "1",
            "--num-samples",
            "3",
            "--max-concurrent",
            "1",
            "--storage",
            str(tmp_path / "runs"),
            "--name",
            "reuse",
        ],
        cwd=tmp_path,
        timeout=240,
    )
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

    from helpers import ROOT

    group = _memory_cgroup(f"visionsweep-test-{os.getpid()}", "2500M")
    if group is None:
        pytest.skip("needs a writable cgroup v1 memory hierarchy (root)")
    with_fault(monkeypatch, "hog_memory_at_epoch=1")
    command = [
        sys.executable,
        str(ROOT / "sweeps" / "run.py"),
        *SLOW_TRIAL,
        "--data",
        str(images),
        "--max-epochs",
        "2",
        "--max-failures",
        "0",
        "--storage",
        str(tmp_path / "runs"),
        "--name",
        "oom",
    ]
    try:
        done = subprocess.run(
            ["bash", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "bash", *command],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            env=dict(os.environ, PYTHONWARNINGS="ignore"),
        )
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
