"""The two points where the tests' faults reach the product (trainables/core/faults.py):
inert when none is asked for, and on cue when one is. The faults themselves, done for real,
are test_faults.py's and test_stops.py's."""

import signal

import pytest

from sweeps.driver import faults as driver
from trainables.core import faults


def report_log():
    seen = []
    return seen, lambda metrics, state: seen.append(metrics["epoch"])


def test_no_fault_asked_leaves_the_trial_and_the_driver_as_they_are(monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    cues = faults.TrialFaults.from_environment()
    assert cues == faults.NO_FAULTS
    _, report = report_log()
    assert cues.around(report, first_attempt=True) is report  # nothing wraps the report
    cues.at_start(0)  # does not raise
    assert driver.driver_faults(object()) == []  # no callback beside the recorder


def test_a_trial_fault_fires_once_at_its_epoch_on_the_first_attempt_only(monkeypatch):
    monkeypatch.setenv(faults.ENV, "fail_seed=2, stall_worker_at_epoch=3")
    cues = faults.TrialFaults.from_environment()
    with pytest.raises(RuntimeError, match=r"fail_seed=2"):
        cues.at_start(2)
    cues.at_start(1)
    signals = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, signum: signals.append(signum))
    seen, report = report_log()
    wrapped = cues.around(report, first_attempt=True)
    for epoch in (1, 2, 3, 4):
        wrapped({"epoch": epoch}, {})
    assert seen == [1, 2, 3, 4]  # every epoch still reported, the fault after its report
    assert signals == [signal.SIGSTOP]
    assert cues.around(report, first_attempt=False) is report  # a retried trial runs clean


def test_the_driver_is_stopped_once_enough_trials_have_finished(monkeypatch):
    monkeypatch.setenv(faults.ENV, "interrupt_driver_after=2")

    class Recorder:
        done = 1

        def finished(self):
            return self.done

    recorder = Recorder()
    (callback,) = driver.driver_faults(recorder)
    stops = []
    monkeypatch.setattr(driver, "die", lambda signum, group=False: stops.append((signum, group)))
    callback.on_trial_result(0, [], None, {})
    assert stops == []
    recorder.done = 2
    callback.on_trial_result(1, [], None, {})
    callback.on_trial_result(2, [], None, {})
    assert stops == [(signal.SIGINT, False)]
    # a resume that asks for no fault runs the first run's pickled callback: it stays still
    monkeypatch.delenv(faults.ENV)
    fresh = driver.DriverFaults(recorder)
    fresh.on_trial_result(3, [], None, {})
    assert stops == [(signal.SIGINT, False)]
