"""How a local Ray instance is started for a sweep, with ray.init replaced by a recorder:
its trial workers run at the priority the user chose, by default the command's own (Ray
alone starts them at niceness 15, below any ordinary process on the machine)."""

from __future__ import annotations

import pytest

from sweeps.driver import cluster, reaper
from sweeps.driver.spec import SweepSpec
from trainables.core.errors import UserError


@pytest.fixture
def started(monkeypatch):
    import ray

    seen = []
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.append(kwargs))
    monkeypatch.setattr(reaper, "start", lambda: None)
    return seen


def test_trial_workers_run_at_the_commands_own_priority_unless_told(started):
    cluster.start_ray(None)
    cluster.start_ray(None, 7)
    assert [s["_system_config"]["worker_niceness"] for s in started] == [0, 7]
    assert SweepSpec().niceness == 0


def test_niceness_is_a_checked_flag():
    from sweeps import run

    parser = run.get_args_parser()
    assert parser.parse_args(["--space", "single", "--niceness", "19"]).niceness == 19
    with pytest.raises(UserError, match="--niceness: must be at most 19"):
        parser.parse_args(["--space", "single", "--niceness", "20"])
