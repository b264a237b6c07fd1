"""Every workaround of Ray's private code (trainables/core/ray_internals.py) still fits the
Ray this project pins, and its check fails, naming the workaround, when what it touches
moves. What each workaround is for is tested where it matters: the loopback listeners in
test_security.py and test_serve.py, the process group in test_stops.py, the usage tag in
test_ray_start.py, a copy's resume in test_stops.py."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from helpers import ROOT
from trainables.core import ray_internals

# importing Ray Serve's internals warns of its own use of pydantic's deprecated API
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_every_workaround_fits_the_pinned_ray():
    import ray

    moved = ray_internals.problems()
    assert not moved, (
        f"Ray {ray.__version__} (the workarounds were written for {ray_internals.RAY_VERSION}) "
        f"moved what these touch: {moved}; see trainables/core/ray_internals.py"
    )
    assert set(ray_internals.CHECKS) == {
        "own_process_group",
        "clusters_off",
        "quiet_default_token",
        "ray_temp_dir",
        "serve_grpc_on_loopback",
        "light_callback_tag",
        "move_trial_storage",
        "after_tune_saves",
        "end_local_monitor",
        "trials_inherit_environment",
    }


def test_the_version_they_were_written_for_is_the_one_pyproject_pins():
    import ray

    pins = set(re.findall(r"ray\[[a-z]+\]==([0-9.]+)", (ROOT / "pyproject.toml").read_text()))
    assert pins == {ray_internals.RAY_VERSION} == {ray.__version__}


def test_a_check_names_its_workaround_when_ray_moves_what_it_touches(monkeypatch):
    from ray._private import ray_constants, services
    from ray.serve._private import replica

    monkeypatch.delattr(services, "ConsolePopen")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", "no longer a flag")
    monkeypatch.setattr(replica, "add_port_to_grpc_server", lambda grpc_server, port: port)
    moved = ray_internals.problems()
    assert set(moved) == {"own_process_group", "clusters_off", "serve_grpc_on_loopback"}
    assert "ConsolePopen" in moved["own_process_group"]
    assert "ENABLE_RAY_CLUSTER" in moved["clusters_off"]
    assert "(server, address)" in moved["serve_grpc_on_loopback"]


def test_a_check_reads_whether_ray_still_calls_what_is_replaced(monkeypatch):
    """A name still there but no longer used by Ray: the source check says so."""
    import inspect

    from ray._private import services

    real = inspect.getsource

    def without_the_call(obj):
        text = real(obj)
        return (
            text.replace("process = ConsolePopen(", "process = Popen(") if obj is services else text
        )

    monkeypatch.setattr(inspect, "getsource", without_the_call)
    assert "process = ConsolePopen(" in ray_internals.problems()["own_process_group"]


def test_the_save_hook_check_fails_when_tune_copies_before_it_saves(monkeypatch):
    """The seal (sweeps/driver/seal.py) is taken between Tune's save and its copy: a Tune
    that started the copy first would carry unsealed files into the experiment."""
    import inspect

    real = inspect.getsource

    def copy_first(obj):
        text = real(obj)
        if getattr(obj, "__name__", "") == "sync_up_experiment_state":
            text = text.replace("save_fn()", "SAVE").replace("syncer.sync_up(", "save_fn()(")
        return text

    monkeypatch.setattr(inspect, "getsource", copy_first)
    assert "before it starts the copy" in ray_internals.problems()["after_tune_saves"]


def test_the_save_hook_runs_after_each_save_with_the_staging_folder(monkeypatch):
    from ray.tune.execution.tune_controller import TuneController

    saved, seen = [], []
    monkeypatch.setattr(TuneController, "save_to_dir", lambda self: saved.append(self))
    ray_internals.after_tune_saves(seen.append)
    try:

        class Storage:
            experiment_driver_staging_path = "/staging"

        controller = TuneController.__new__(TuneController)
        controller._storage = Storage()
        TuneController.save_to_dir(controller)
        assert saved == [controller] and seen == ["/staging"]
        ray_internals.after_tune_saves(None)  # a sweep ended: no hook
        TuneController.save_to_dir(controller)
        assert len(saved) == 2 and seen == ["/staging"]
    finally:
        ray_internals.after_tune_saves(None)


def test_rays_processes_start_in_a_group_of_their_own_and_the_patch_is_undone():
    from ray._private import services

    before = services.ConsolePopen
    with ray_internals.own_process_group():
        assert services.ConsolePopen is not before
        child = services.ConsolePopen(["sleep", "5"])
        try:
            assert os.getpgid(child.pid) == child.pid != os.getpgid(0)
        finally:
            child.kill()
            child.wait()
    assert services.ConsolePopen is before


def test_clusters_are_off_only_while_a_local_ray_starts(monkeypatch):
    from ray._private import ray_constants

    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    monkeypatch.setenv(name, "users own")
    with ray_internals.clusters_off(True):
        assert os.environ[name] == "0" and ray_constants.ENABLE_RAY_CLUSTER is False
        # what the processes Ray starts read
        out = subprocess.run(
            ["sh", "-c", f"echo ${name}"], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "0"
    assert os.environ[name] == "users own"
    with ray_internals.clusters_off(False):
        assert name not in os.environ and ray_constants.ENABLE_RAY_CLUSTER is True
    assert os.environ[name] == "users own"


def test_only_rays_default_token_line_is_held_back(caplog):
    import logging

    logger = logging.getLogger(ray_internals.TOKEN_LOGGER)
    with caplog.at_level(logging.WARNING, logger=ray_internals.TOKEN_LOGGER):
        with ray_internals.quiet_default_token():
            logger.warning(f"{ray_internals.TOKEN_LINE}. Set RAY_AUTH_MODE=disabled ...")
            logger.warning("some other warning")
        logger.warning(f"{ray_internals.TOKEN_LINE}, after")
    assert [r.getMessage() for r in caplog.records] == [
        "some other warning",
        f"{ray_internals.TOKEN_LINE}, after",
    ]


def test_a_trial_is_moved_into_the_bound_experiment_once(tmp_path):
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment.trial import Trial

    storage = StorageContext(
        storage_path=str(tmp_path / "original"), experiment_dir_name="sweep", trial_dir_name="t0"
    )
    trial = Trial("__fake", storage=storage, stub=True)
    copy = str(tmp_path / "copy")
    assert ray_internals.move_trial_storage(trial, copy, "sweep-copy")
    assert trial.path == f"{copy}/sweep-copy/t0"
    assert storage.experiment_dir_name == "sweep"  # Tune's own context is left alone
    assert not ray_internals.move_trial_storage(trial, copy, "sweep-copy")


def test_servings_replica_binds_its_grpc_server_on_loopback(monkeypatch):
    from ray.serve._private import replica

    seen = []
    monkeypatch.setattr(
        replica, "add_port_to_grpc_server", lambda server, address: seen.append(address)
    )
    ray_internals.serve_grpc_on_loopback()
    replica.add_port_to_grpc_server(None, "[::]:0")
    assert seen == ["127.0.0.1:0"]


def test_a_trial_keeps_tunes_runtime_environment_unless_the_local_workers_have_it(monkeypatch):
    """Tune's class cache, as its controller asks it for a trial's actor class: with no
    local instance noted, or a variable that differs from what its workers inherited,
    Tune's runtime environment; with every variable inherited, none (a prestarted worker
    can take the trial). The check fails when Tune's cache no longer gives that
    environment."""
    import os

    from ray.tune.execution import class_cache

    class Trial:
        pass

    def env_vars(cls) -> dict | None:
        return cls._default_options.get("runtime_env", {}).get("env_vars")

    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    ray_internals.trials_inherit_environment()
    ray_internals.note_local_environment(None)
    try:
        assert env_vars(class_cache._ActorClassCache().get(Trial)) == {"PL_DISABLE_FORK": "1"}
        monkeypatch.setenv("PL_DISABLE_FORK", "1")
        ray_internals.note_local_environment(dict(os.environ))
        assert env_vars(class_cache._ActorClassCache().get(Trial)) is None
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "set after Ray started")
        assert env_vars(class_cache._ActorClassCache().get(Trial)) == {
            "PL_DISABLE_FORK": "1",
            "AWS_ACCESS_KEY_ID": "set after Ray started",
        }
    finally:
        ray_internals.note_local_environment(None)

    monkeypatch.setattr(class_cache, "DEFAULT_ENV_VARS", [("PL_DISABLE_FORK", "1")])
    assert "DEFAULT_ENV_VARS" in ray_internals.problems()["trials_inherit_environment"]
