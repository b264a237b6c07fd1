"""The visionsweep console script: one name, a subcommand per command, each the same code as
python sweeps/COMMAND.py; flags first (no subcommand) is run, as the script first was."""

from __future__ import annotations

import pytest

from sweeps import main


def _ran(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ended:
        main.cli_main(argv)
    out = capsys.readouterr()
    return ended.value.code, out.out, out.err


def test_each_subcommand_is_its_command(capsys):
    code, _, err = _ran(["weights", "list", "--model", "resnet19"], capsys)
    assert code == 2 and err.strip().splitlines() == [
        line for line in err.strip().splitlines() if "unknown model 'resnet19'" in line
    ]
    code, out, _ = _ran(["run", "--list-spaces"], capsys)
    assert code == 0 and "googlenet_strategies" in out
    code, out, _ = _ran(["--list-spaces"], capsys)  # flags first: run
    assert code == 0 and "googlenet_strategies" in out
    code, out, _ = _ran(["export", "--help"], capsys)
    assert code == 0 and "--out" in out


def test_an_unknown_subcommand_is_one_line_with_the_nearest(capsys):
    code, _, err = _ran(["wieghts", "list"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "unknown command 'wieghts' (did you mean 'weights'?)" in err
    code, out, _ = _ran(["--help"], capsys)
    assert code == 0 and "visionsweep confirm" in out


def test_a_reader_that_goes_away_ends_it_without_a_traceback():
    import subprocess
    import sys

    reader = subprocess.Popen(  # visionsweep --help | head -0
        [sys.executable, "-c", "from sweeps.main import cli_main; cli_main(['--help'])"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    reader.stdout.close()  # the reader is gone before a byte is read
    _, err = reader.communicate(timeout=60)
    assert reader.returncode == 1 and b"Traceback" not in err and b"BrokenPipe" not in err


def _as_process(tmp_path, body: str):
    """``body`` (the lines of an entry function) run as a command's whole process."""
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "command.py"
    script.write_text(
        "import atexit, sys, threading, time\n"
        "from pathlib import Path\n"
        "from sweeps.cli import as_process\n"
        f"out = Path({str(tmp_path)!r})\n"
        "def entry():\n" + textwrap.indent(textwrap.dedent(body), "    ") + "\n"
        "as_process(entry)\n"
    )
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )


def test_a_command_ends_at_once_with_its_status_output_and_exit_handlers(tmp_path):
    """as_process skips only the interpreter's teardown: the exit status, every buffered
    byte of both streams and the exit handlers' work (Ray's shutdown is one) all remain."""
    done = _as_process(
        tmp_path,
        """
        atexit.register(lambda: (out / "handler").write_text("ran"))
        sys.stdout.write("x" * 100_000)  # buffered, not flushed
        sys.stderr.write("said")
        sys.exit(3)
        """,
    )
    assert done.returncode == 3 and done.stdout == "x" * 100_000 and done.stderr == "said"
    assert (tmp_path / "handler").read_text() == "ran"
    done = _as_process(tmp_path, 'sys.exit("a message")')  # as sys.exit says it
    assert done.returncode == 1 and done.stderr == "a message\n"
    done = _as_process(tmp_path, "print('fine')")  # returns: status 0
    assert done.returncode == 0 and done.stdout == "fine\n"


def test_a_command_waits_for_a_thread_that_is_still_working(tmp_path):
    """A thread that a normal exit would wait for still finishes its work."""
    done = _as_process(
        tmp_path,
        """
        def work():
            time.sleep(0.5)
            (out / "thread").write_text("finished")
        threading.Thread(target=work).start()
        sys.exit(4)
        """,
    )
    assert done.returncode == 4 and (tmp_path / "thread").read_text() == "finished"


def test_tunes_failed_copy_of_its_state_is_one_line_not_a_traceback(tmp_path):
    """A full disk under the experiment: Tune's copy of its state fails in its copy thread,
    and Tune logs the whole traceback; the driver keeps it to one line with the reason
    (the driver's own line about the same fault follows)."""
    import logging

    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    from sweeps.driver.builder import _environment

    class FullDisk:
        def sync_up(self, local, remote):
            return True

        def wait(self):
            raise OSError(28, "No space left on device")

    class Storage:
        experiment_driver_staging_path = str(tmp_path)
        experiment_fs_path = str(tmp_path / "experiment")
        syncer = FullDisk()

    class Kept(logging.Handler):  # Ray's loggers do not propagate to pytest's
        def __init__(self):
            super().__init__()
            self.records, self.lines = [], []

        def emit(self, record):
            self.records.append(record)
            self.lines.append(logging.Formatter().format(record))

    _environment()
    kept = Kept()
    logger = logging.getLogger("ray.tune.execution.experiment_state")
    logger.addHandler(kept)
    try:
        manager = _ExperimentCheckpointManager(storage=Storage(), checkpoint_period=0)
        manager.sync_up_experiment_state(save_fn=lambda: None, force=True)
    finally:
        logger.removeHandler(kept)
    [record] = [r for r in kept.records if "Saving experiment state" in r.getMessage()]
    assert record.getMessage().endswith("failed with exception: No space left on device")
    assert kept.lines and not [line for line in kept.lines if "Traceback" in line]
    assert all(len(line.splitlines()) == 1 for line in kept.lines)


def test_the_tools_own_warnings_are_one_line_and_other_librarys_as_python_shows_them(tmp_path):
    """An old config key's FutureWarning on the command line: ``warning: ...`` in one line,
    as the tool's other lines (Python's form adds the file and the source line); a warning
    from code outside the tool keeps Python's form."""
    import subprocess
    import sys

    script = tmp_path / "command.py"
    script.write_text(
        "import warnings\n"
        "from sweeps.cli import run\n"
        "from trainables.core.config import parse_overrides\n"
        "def main():\n"
        "    parse_overrides(['scheduler=step'])\n"
        "    warnings.warn('from elsewhere')\n"
        "    return 0\n"
        "run(main)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == (
        "warning: config key 'scheduler' is now 'lr_schedule' (the learning-rate schedule); "
        "read as lr_schedule"
    ), lines
    assert lines[1].startswith(f"{script}:6: UserWarning: from elsewhere"), lines
    assert len(lines) == 3, lines  # and Python's source line below it


def test_a_trial_silent_before_its_first_epoch_is_warned_about_without_a_made_up_epoch(
    monkeypatch, capsys
):
    from types import SimpleNamespace

    from sweeps.driver import watchdog

    clock = [100.0]
    monkeypatch.setattr(watchdog.time, "monotonic", lambda: clock[0])
    dog = watchdog.Watchdog(limit=0, warn_floor=60)
    trial = SimpleNamespace(trial_id="t1", status="RUNNING")
    dog.on_step_end(0, [trial])  # its clock starts
    clock[0] += 61
    dog.on_step_end(1, [trial])
    first = capsys.readouterr().err
    assert "reported nothing for 61 s (no epoch reported yet" in first, first
    assert "slowest epoch" not in first
    dog.on_trial_result(2, [trial], trial, {})  # an epoch of 61 s
    clock[0] += 200
    dog.on_step_end(3, [trial])
    assert "(its slowest epoch so far: 61 s)" in capsys.readouterr().err


def test_tunes_warning_about_trials_without_metrics_leaves_out_the_unstarted_ones(monkeypatch):
    """Tune warns, at a stopped sweep's end, about every trial it made but never started
    (they have no metrics to read back): those lines go; one about a trial that ran, and
    whose files are missing, stays, counted again."""
    import logging

    from sweeps.driver import recorder as R
    from sweeps.sinks.base import TrialEntry

    class Recorder:
        entries = {
            "a_00000": TrialEntry("a_00000", "v", {}, "", status="INTERRUPTED"),
            "a_00001": TrialEntry("a_00001", "v", {}, "", status="NOT_STARTED"),
            "a_00002": TrialEntry("a_00002", "v", {}, "", status="NOT_STARTED"),
        }

    def warning(*trials: str) -> logging.LogRecord:
        lines = [f"- small_cnn-0.1_s0_{t}: FileNotFoundError('...')" for t in trials]
        text = f"Failed to fetch metrics for {len(trials)} trial(s):\n" + "\n".join(lines)
        return logging.LogRecord("ray.tune", logging.WARNING, "", 0, text, (), None)

    only = R.NoMetricsOfUnstarted()
    monkeypatch.setattr(R.THIS_SWEEP, "recorder", None)
    assert only.filter(warning("a_00001"))  # no sweep of ours: as Tune says it
    monkeypatch.setattr(R.THIS_SWEEP, "recorder", Recorder())
    assert not only.filter(warning("a_00001", "a_00002"))
    mixed = warning("a_00000", "a_00001")
    assert only.filter(mixed)
    assert mixed.getMessage() == (
        "Failed to fetch metrics for 1 trial(s):\n"
        "- small_cnn-0.1_s0_a_00000: FileNotFoundError('...')"
    )
    other = logging.LogRecord("ray.tune", logging.WARNING, "", 0, "Something else", (), None)
    assert only.filter(other) and other.getMessage() == "Something else"
