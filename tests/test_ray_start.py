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


def test_the_sweeps_callbacks_are_tagged_as_tune_tags_them_without_its_integrations():
    """Tune's usage tag of a run's callbacks, counted without importing its MLflow
    integration (seconds of every sweep's start): the same tag as Tune's own count, for
    the recorder's and the watchdog's kinds of callback. Run in a fresh process, where
    nothing has imported MLflow yet."""
    import subprocess
    import sys

    from helpers import ROOT

    script = """
import sys
from ray.air._internal import usage
from ray.tune import Callback
from ray.tune.logger import LoggerCallback
from trainables.core.ray_internals import light_callback_tag

seen = []
usage.record_extra_usage_tag = lambda key, value: seen.append((key, value))
callbacks = [Callback(), LoggerCallback(), Callback()]
tune_own = usage.tag_callbacks
light_callback_tag()
assert usage.tag_callbacks is not tune_own
light_callback_tag()  # once only
usage.tag_callbacks(callbacks)
assert "mlflow" not in sys.modules, "counted by importing MLflow"
tune_own(callbacks)
assert "mlflow" in sys.modules  # Tune's own count does import it
assert len(seen) == 2 and seen[0] == seen[1], seen
print(seen[0][1])
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == '{"CustomCallback": 2, "CustomLoggerCallback": 1}'


def test_a_local_rays_trials_take_the_workers_it_prestarted_and_it_ends_whole():
    """Ray starts a worker process per CPU with a local instance; Tune's trial actor, which
    carries a runtime environment of its own, never got one of them and had a new process
    started. A real local Ray, in a fresh process: an actor made by Tune's own class cache
    (the one Tune's controller asks) runs in a worker Ray prestarted. Where one of the
    variables Tune hands each trial differs from what the workers inherited, Tune's runtime
    environment stays. Ray's stop ends the autoscaler monitor before its shutdown reaches
    the raylet (Ray ended it last, after the GCS, and waited a second for it), and leaves
    no process."""
    import subprocess
    import sys

    from helpers import ROOT

    script = """
import os, time
from pathlib import Path
from sweeps.driver import cluster, reaper
reaper.start = lambda: None
cluster.start_ray(None)
def idle():
    return [pid for pid in reaper.descendants(os.getpid()) if Path(f"/proc/{pid}").exists()
            and Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::IDLE")]
deadline = time.monotonic() + 30
while not idle() and time.monotonic() < deadline:
    time.sleep(0.2)
prestarted = idle()
import ray
from ray.tune.execution.class_cache import _ActorClassCache
from trainables.core.ray_internals import trials_inherit_environment
trials_inherit_environment()
class Trial:
    def pid(self):
        return os.getpid(), os.environ.get("PL_DISABLE_FORK")
actor = _ActorClassCache().get(Trial).options(num_cpus=1).remote()
pid, fork = ray.get(actor.pid.remote(), timeout=60)
print(len(prestarted) > 0, pid in prestarted, fork)
os.environ["AWS_ACCESS_KEY_ID"] = "set-after-ray-started"
later = _ActorClassCache().get(type("Later", (Trial,), {}))
print(later._default_options.get("runtime_env", {}).get("env_vars", {}).get("AWS_ACCESS_KEY_ID"))
from ray._private import node as ray_node
monitor = ray._private.worker._global_node.all_processes["monitor"][0].process
kill = ray_node.Node._kill_process_type
ended_before = []  # per process type Ray's shutdown ends: was the monitor already ended
def recorded(self, kind, *args, **kwargs):
    ended_before.append((kind, monitor.poll() is not None))
    return kill(self, kind, *args, **kwargs)
ray_node.Node._kill_process_type = recorded
cluster.stop_ray()
alive = [pid for pid in reaper.descendants(os.getpid())
         if Path(f"/proc/{pid}").exists()
         and Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"]
print(dict(ended_before)["raylet"], len(alive))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr
    took, kept, last = result.stdout.strip().splitlines()[-3:]
    assert took == "True True 1", result.stdout  # a prestarted worker, Tune's variable inherited
    assert kept == "set-after-ray-started", result.stdout
    assert last == "True 0", result.stdout
