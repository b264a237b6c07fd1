"""Every place this project reaches into Ray's private code, in one room.

Each workaround says what it does and why, and registers a check of the Ray internals it
touches (``@_checks("name")``): the check returns what no longer fits, or None. All were
written against Ray ``RAY_VERSION``, the version pyproject.toml pins; tests/test_ray_internals.py
runs every check, so an upgrade that moves what a workaround touches fails there, naming the
workaround, instead of silently undoing it (a listener on every interface again, a Ctrl-C
that leaves the driver hanging, seconds more of every sweep's start).

Nothing here is imported until a command starts Ray; every Ray import is inside a function.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable
from contextlib import contextmanager

RAY_VERSION = "2.60.0"  # what every workaround below was written and tested against

CHECKS: dict[str, Callable[[], str | None]] = {}  # workaround -> its check


def _checks(name: str):
    def register(check: Callable[[], str | None]):
        CHECKS[name] = check
        return check

    return register


def problems() -> dict[str, str]:
    """Every workaround whose Ray internals no longer fit: name -> what moved."""
    found = {}
    for name, check in CHECKS.items():
        try:
            problem = check()
        except Exception as exc:  # an internal gone: its import or attribute fails
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            found[name] = problem
    return found


def _source_has(module, text: str) -> str | None:
    return (
        None if text in inspect.getsource(module) else f"{module.__name__} no longer has {text!r}"
    )


# -- a local Ray's processes in a process group of their own -----------------------------


@contextmanager
def own_process_group():
    """Within it, the processes ``ray.init`` starts (GCS, raylet, their helpers) start in a
    process group of their own. A signal sent to the driver's whole group (what `timeout`,
    systemd and batch schedulers send on a stop) then reaches the driver alone, which stops
    the sweep and writes its table while Ray still runs; sent to Ray's processes as well, it
    ended GCS first and left the driver hanging without a table. Ray still ties them to the
    driver (Linux's parent-death signal) and the watchdog in sweeps/driver/reaper.py still
    finds them. Skipped where Ray cannot tie them to the driver (Ray then needs them in its
    group). Ray starts every such process through ``ray._private.services.ConsolePopen``."""
    from ray._private import services, utils

    popen = getattr(services, "ConsolePopen", None)
    if os.name != "posix" or popen is None or not utils.detect_fate_sharing_support():
        yield
        return

    class InOwnGroup(popen):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("start_new_session", True)
            super().__init__(*args, **kwargs)

    services.ConsolePopen = InOwnGroup
    try:
        yield
    finally:
        services.ConsolePopen = popen


@_checks("own_process_group")
def _check_process_group() -> str | None:
    import subprocess

    from ray._private import services, utils

    if not issubclass(services.ConsolePopen, subprocess.Popen):
        return "ray._private.services.ConsolePopen is no longer a subprocess.Popen"
    if not callable(utils.detect_fate_sharing_support):
        return "ray._private.utils.detect_fate_sharing_support is gone"
    # Ray's processes are started by name through the module's ConsolePopen
    return _source_has(services, "process = ConsolePopen(")


# -- a local Ray on loopback only --------------------------------------------------------


@contextmanager
def clusters_off(off: bool):
    """Ray's laptop setting (clusters off), which makes a node's address the loopback one:
    Ray otherwise takes a node's outward address even when told 127.0.0.1, and binds its
    servers to it or to every interface. Set in Ray's constants for this process (Ray's
    ``services.get_node_ip_address`` reads ``ray_constants.ENABLE_RAY_CLUSTER``) and, while
    in the block, in the environment the processes Ray starts inherit (then put back: a
    later `ray start` from this process, say a notebook's, must not find clusters turned
    off). ``off=False`` turns clusters back on, before another cluster is joined, whose
    nodes must reach this driver."""
    from ray._private import ray_constants

    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    before = os.environ.get(name)
    ray_constants.ENABLE_RAY_CLUSTER = not off
    if off:
        os.environ[name] = "0"
    else:
        os.environ.pop(name, None)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


@_checks("clusters_off")
def _check_clusters_off() -> str | None:
    from ray._private import ray_constants, services

    if not isinstance(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, str):
        return "ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR is gone"
    if not isinstance(ray_constants.ENABLE_RAY_CLUSTER, bool):
        return "ray_constants.ENABLE_RAY_CLUSTER is gone"
    return _source_has(services, "if not ray_constants.ENABLE_RAY_CLUSTER:")


# -- the line Ray logs on every local start ----------------------------------------------

TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"
TOKEN_LINE = "Token authentication is enabled for this Ray cluster"


@contextmanager
def quiet_default_token():
    """Ray warns, on every local start, that it turned token authentication on (its
    default): a line for each sweep that asks nothing of the user. Only that line goes."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(TOKEN_LINE)

    logger = logging.getLogger(TOKEN_LOGGER)
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


@_checks("quiet_default_token")
def _check_token_line() -> str | None:
    import importlib

    return _source_has(importlib.import_module(TOKEN_LOGGER), TOKEN_LINE)


# -- a local Ray's autoscaler monitor, ended first ---------------------------------------


def end_local_monitor() -> None:
    """Before ``ray.shutdown`` of a local instance of ours: end its autoscaler monitor at
    once (SIGKILL). Ray's shutdown ends the raylet and the GCS first, then sends the monitor
    SIGTERM, on which the monitor tries to tell the (gone) GCS that the autoscaler failed;
    Ray waits a full second for it, then kills it: a second of every sweep's end. A local
    instance has no autoscaled nodes, so there is nothing for the monitor to clean up, and
    ended while the GCS is still up it tells no driver of a failure. Ray's shutdown then
    skips it as already ended. Nothing is done for a joined cluster (this process started
    none of its processes)."""
    import subprocess

    import ray
    from ray._private import ray_constants

    node = ray._private.worker._global_node
    for info in (node.all_processes if node is not None else {}).get(
        ray_constants.PROCESS_TYPE_MONITOR, []
    ):
        if info.process.poll() is None:
            info.process.kill()
            try:
                info.process.wait(timeout=10)
            except subprocess.TimeoutExpired:  # not reaped (stuck in the kernel): Ray's
                pass  # shutdown tries again, as it did before this


@_checks("end_local_monitor")
def _check_end_local_monitor() -> str | None:
    import ray._private.worker
    from ray._private import node, ray_constants

    if not hasattr(ray._private.worker, "_global_node"):
        return "ray._private.worker has no _global_node"
    if not isinstance(getattr(ray_constants, "PROCESS_TYPE_MONITOR", None), str):
        return "ray_constants has no PROCESS_TYPE_MONITOR"
    return _source_has(node, "self.all_processes") or _source_has(
        node, "if process.poll() is not None:"
    )


# -- Ray's temporary folder ---------------------------------------------------------------


def ray_temp_dir() -> str:
    """Where a local Ray keeps its session files (RAY_TMPDIR, else TMPDIR, else /tmp)."""
    from ray._common.utils import get_default_ray_temp_dir

    return get_default_ray_temp_dir()


@_checks("ray_temp_dir")
def _check_temp_dir() -> str | None:
    return None if isinstance(ray_temp_dir(), str) else "get_default_ray_temp_dir gave no path"


# -- Ray Serve's replicas on loopback -----------------------------------------------------


def serve_grpc_on_loopback() -> None:
    """Called in each replica of a local Ray Serve (sweeps/serve.py --ray) before it starts
    its gRPC server for calls between deployments, which Ray Serve binds to every
    interface ([::]:0) with no setting to change it. On a local instance all its peers are
    on 127.0.0.1: it binds there."""
    from ray.serve._private import replica

    bind = replica.add_port_to_grpc_server

    def on_loopback(server, address: str):
        return bind(server, address.replace("[::]", "127.0.0.1", 1))

    replica.add_port_to_grpc_server = on_loopback


@_checks("serve_grpc_on_loopback")
def _check_serve_grpc() -> str | None:
    try:
        from ray.serve._private import replica
    except ImportError:
        return None  # Ray Serve not installed (the 'serve' extra): nothing to patch
    if list(inspect.signature(replica.add_port_to_grpc_server).parameters)[:2] != [
        "server",
        "address",
    ]:
        return "replica.add_port_to_grpc_server no longer takes (server, address)"
    return _source_has(replica, 'add_port_to_grpc_server(self._server, "[::]:0")')


# -- Tune's usage tag of a run's callbacks ------------------------------------------------

# Tune's integrations' callbacks, which its usage tag counts by class name
INTEGRATION_CALLBACKS = (
    "WandbLoggerCallback",
    "MLflowLoggerCallback",
    "CometLoggerCallback",
    "AimLoggerCallback",
)


def light_callback_tag() -> None:
    """Tune tags a run with the kinds of callbacks it was given (a usage statistic), and to
    tell its own from the user's it imports its MLflow, W&B, Comet and Aim integrations:
    about 1.1-1.5 s of every sweep's start here, for MLflow alone. The recorder and the
    watchdog are neither, so the same tag is counted here without the imports; a run given
    one of Tune's own callbacks is counted by Tune (``ray.air._internal.usage``).
    tests/test_ray_start.py checks the tag against Tune's own."""
    import json
    from collections import Counter

    from ray.air._internal import usage

    tune_own = usage.tag_callbacks
    if getattr(tune_own, "light", False):
        return

    def tag_callbacks(callbacks) -> bool | None:
        from ray.tune import Callback
        from ray.tune.logger import LoggerCallback
        from ray.tune.utils.callback import DEFAULT_CALLBACK_CLASSES

        builtin = {c.__name__ for c in DEFAULT_CALLBACK_CLASSES} | set(INTEGRATION_CALLBACKS)
        if not callbacks or any(type(c).__name__ in builtin for c in callbacks):
            return tune_own(callbacks)
        counts = Counter(
            "CustomLoggerCallback" if isinstance(c, LoggerCallback) else "CustomCallback"
            for c in callbacks
            if isinstance(c, Callback)
        )
        if counts:
            usage.record_extra_usage_tag(usage.TagKey.AIR_CALLBACKS, json.dumps(dict(counts)))
        return None

    tag_callbacks.light = True
    usage.tag_callbacks = tag_callbacks


@_checks("light_callback_tag")
def _check_callback_tag() -> str | None:
    import importlib

    from ray.air._internal import usage
    from ray.tune.utils.callback import DEFAULT_CALLBACK_CLASSES

    if not callable(usage.record_extra_usage_tag) or not hasattr(usage.TagKey, "AIR_CALLBACKS"):
        return "usage.record_extra_usage_tag or TagKey.AIR_CALLBACKS is gone"
    if not all(isinstance(c, type) for c in DEFAULT_CALLBACK_CLASSES):
        return "DEFAULT_CALLBACK_CLASSES is no longer a list of classes"
    source = inspect.getsource(usage._count_callbacks)  # where Tune's tag counts them
    if any(name not in source for name in INTEGRATION_CALLBACKS):
        return "Tune's tag_callbacks counts other integrations than INTEGRATION_CALLBACKS"
    # Tune calls it through the module, where the light count replaces it
    return _source_has(
        importlib.import_module("ray.tune.tune"), "air_usage.tag_callbacks(callbacks)"
    )


# -- a local instance's trials on the workers Ray prestarted -------------------------------

_INHERITED: dict[str, str] | None = None  # a local Ray's environment, as its workers have it


def note_local_environment(environment: dict[str, str] | None) -> None:
    """The environment a local instance of ours was started with, which its workers
    inherit (None: no local instance, or another Ray was joined)."""
    global _INHERITED
    _INHERITED = dict(environment) if environment is not None else None


def trials_inherit_environment() -> None:
    """Tune gives each trial's actor a runtime environment of its own: environment
    variables (``PL_DISABLE_FORK`` for PyTorch Lightning, and whichever of a list of AWS
    and Ray Train variables the driver has) so that a trial on another node sees them. For
    such an actor Ray starts a new worker process instead of handing it one of the workers
    it prestarted (a process that has imported Ray's worker already), so the prestarted
    ones sat idle. A local instance's workers inherit the driver's environment as it was
    when Ray started (``note_local_environment``): a trial whose variables all have those
    values already gets no runtime environment of its own, and so a prestarted worker. One
    whose variables differ (set after Ray started), or any trial on a joined cluster,
    keeps Tune's."""
    from ray.tune.execution import class_cache

    cache = class_cache._ActorClassCache
    if getattr(cache.get, "inherits", False):
        return
    tune_own = cache.get

    def get(self, trainable_cls):
        wanted = dict(class_cache.DEFAULT_ENV_VARS)
        wanted.update(
            (name, os.environ[name])
            for name in class_cache.ENV_VARS_TO_PROPAGATE
            if name in os.environ
        )
        inherited = _INHERITED
        if inherited is None or any(inherited.get(k) != v for k, v in wanted.items()):
            return tune_own(self, trainable_cls)
        import ray

        key = ("inherited", trainable_cls)
        if key not in self._cache:
            self._cache[key] = ray.remote(trainable_cls)
        return self._cache[key]

    get.inherits = True
    cache.get = get


@_checks("trials_inherit_environment")
def _check_inherit_environment() -> str | None:
    from ray.tune.execution import class_cache, tune_controller

    if not isinstance(class_cache.DEFAULT_ENV_VARS, dict):
        return "class_cache.DEFAULT_ENV_VARS is no longer a dict"
    if not all(isinstance(n, str) for n in class_cache.ENV_VARS_TO_PROPAGATE):
        return "class_cache.ENV_VARS_TO_PROPAGATE is no longer a set of names"
    if "_cache" not in inspect.getsource(class_cache._ActorClassCache.__init__):
        return "_ActorClassCache keeps its classes elsewhere than self._cache"
    moved = _source_has(class_cache, 'runtime_env = {"env_vars": env_vars}')
    if moved:  # each trial's runtime environment: the variables, nothing else
        return moved
    return _source_has(tune_controller, "self._class_cache.get(trainable_cls)")


# -- a trial's storage, moved into the bound experiment -----------------------------------


def move_trial_storage(trial, parent: str, name: str, filesystem=None) -> bool:
    """Point ``trial`` at experiment ``name`` under ``parent`` (a copy of its storage
    context with Tune's two location fields replaced, and ``filesystem`` for a URI):
    Tune has no public way to move a trial it is adding. False when it is already there
    (or has no storage yet)."""
    import copy

    storage = trial.storage
    if storage is None or (
        storage.storage_fs_path == parent and storage.experiment_dir_name == name
    ):
        return False
    moved = copy.copy(storage)
    moved.storage_fs_path, moved.experiment_dir_name = parent, name
    if filesystem is not None:
        moved.storage_filesystem = filesystem
    trial.set_storage(moved)
    return True


@_checks("move_trial_storage")
def _check_trial_storage() -> str | None:
    from ray.tune.experiment import trial

    Trial, StorageContext = trial.Trial, trial.StorageContext  # what Tune's trials use

    if not callable(getattr(Trial, "set_storage", None)):
        return "Trial.set_storage is gone"
    init = inspect.getsource(StorageContext.__init__)
    for field in ("self.storage_fs_path", "self.experiment_dir_name", "self.storage_filesystem"):
        if field not in init:
            return f"StorageContext no longer sets {field}"
    return None


# -- a hook inside Tune's save of its experiment state ------------------------------------

_SAVE_HOOKS: list[Callable[[str], None]] = []  # the hook of the sweep running in this process


def after_tune_saves(hook: Callable[[str], None] | None) -> None:
    """Run ``hook(staging_folder)`` right after each of Tune's saves of its experiment
    state and before Tune copies it into the experiment (None: no hook). Tune's controller
    writes its state files into a local staging folder (``TuneController.save_to_dir``) and
    then starts a background copy of that folder into the experiment; a file sealed in
    between is sealed before any copy of it exists there (sweeps/driver/seal.py)."""
    from ray.tune.execution.tune_controller import TuneController

    _SAVE_HOOKS[:] = [hook] if hook is not None else []
    own = TuneController.save_to_dir
    if getattr(own, "hooked", False):
        return

    def save_to_dir(self):
        own(self)
        for each in list(_SAVE_HOOKS):
            each(self._storage.experiment_driver_staging_path)

    save_to_dir.hooked, save_to_dir.own = True, own
    TuneController.save_to_dir = save_to_dir


@_checks("after_tune_saves")
def _check_save_hook() -> str | None:
    from ray.tune.execution import experiment_state
    from ray.tune.execution.tune_controller import TuneController

    save = getattr(TuneController.save_to_dir, "own", TuneController.save_to_dir)  # Tune's
    if "self._storage.experiment_driver_staging_path" not in inspect.getsource(save):
        return "TuneController.save_to_dir no longer saves into the driver's staging folder"
    if "save_fn=self.save_to_dir" not in inspect.getsource(TuneController.checkpoint):
        return "TuneController.checkpoint no longer saves through save_to_dir"
    sync = inspect.getsource(experiment_state._ExperimentCheckpointManager.sync_up_experiment_state)
    if not 0 <= sync.find("save_fn()") < sync.find("syncer.sync_up("):
        return "Tune no longer saves its state before it starts the copy into the experiment"
    return None
