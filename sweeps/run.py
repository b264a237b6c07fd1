"""Run a study as one Ray Tune sweep.

    python sweeps/run.py --space googlenet_strategies [--data DIR] [--smoke] [--set KEY=VALUE ...]
    python sweeps/run.py --list-spaces

Everything a user can get wrong is checked before anything is written or Ray starts; such a
mistake ends in one line on stderr and exit status 2. A sweep whose trials failed still
writes its table and exits with status 1.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import replace

from sweeps import cli
from sweeps.driver.claim import check_data_apart, check_new
from sweeps.driver.cluster import (
    check_reachable,
    cluster_nodes,
    local_resources,
    resources,
    start_ray,
    stop_ray,
)
from sweeps.driver.interrupt import GracefulStop
from sweeps.driver.spec import (
    NUMBERS,
    SCHEDULERS,
    SMOKE_IMAGES_PER_CLASS,
    Sweep,
    SweepSpec,
    check_same_data,
    resolve,
    resumed,
)
from sweeps.experiment.files import DATA_REPORT, SPLIT_CSV, SWEEP_JSON
from sweeps.experiment.redact import redact, usable
from trainables.data import resolve_data


def typed(setting: str):
    """The argparse type of a numeric setting: its kind and range, as the API checks them."""
    kind, limits = NUMBERS[setting]
    return cli.number(kind, **limits)


def get_args_parser() -> cli.Parser:
    p = cli.parser(__doc__, "python sweeps/run.py")
    p.add_argument("--space", help="the study to run (see --list-spaces)")
    p.add_argument("--list-spaces", action="store_true", help="list the studies and exit")
    p.add_argument("--list-keys", action="store_true", help="list the --set keys and exit")
    p.add_argument(
        "--data",
        help="image folder (one subfolder per class) or a root with "
        "train/ val/ test/; default: the embedded demo digits",
    )
    p.add_argument("--storage", default="runs", help="where experiments go (default: ./runs)")
    p.add_argument("--name", help="experiment name (default: SPACE-YYYYmmdd-HHMMSS)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing experiment of the same name"
    )
    p.add_argument(
        "--resume",
        metavar="EXPERIMENT_DIR",
        help="continue an interrupted sweep: finished trials stay, unfinished ones "
        "go on from their checkpoints",
    )
    p.add_argument(
        "--retry-errored",
        action="store_true",
        help="with --resume: also rerun trials that ended in error",
    )
    p.add_argument(
        "--trust-state",
        action="store_true",
        help="with --resume: open Ray Tune's state files (pickles) even where no sweep of "
        "yours sealed them (an experiment someone else wrote)",
    )
    p.add_argument(
        "--max-failures",
        type=typed("max_failures"),
        default=2,
        help="retry a trial whose worker died up to N times, from its last checkpoint (default 2)",
    )
    p.add_argument(
        "--stall-timeout",
        type=typed("stall_timeout"),
        metavar="SECONDS",
        help="stop a trial that has reported nothing for this long (its worker "
        "stalled) and retry it like a lost worker; warned about earlier; "
        "0: never stop (default 3600)",
    )
    p.add_argument(
        "--niceness",
        type=typed("niceness"),
        default=0,
        help="run the trials at this niceness above this command's own (as nice -n N): "
        "0 (default) shares the machine as the command does; 19 yields to everything",
    )
    p.add_argument(
        "--num-samples",
        type=typed("num_samples"),
        help="grid spaces: repeat every variant with this many seeds (default 1); "
        "searched spaces: the number of trials (default: the space's budget)",
    )
    p.add_argument(
        "--max-epochs", type=typed("max_epochs"), help="cap every trial at this many epochs"
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help=f"shrink to seconds: {SMOKE_IMAGES_PER_CLASS} images per class, 32px, 2 epochs",
    )
    p.add_argument(
        "--max-per-class",
        type=typed("max_per_class"),
        metavar="N",
        help="use the first N images of each class (of each split when pre-split)",
    )
    p.add_argument(
        "--cpus-per-trial",
        type=typed("cpus_per_trial"),
        help="CPUs per trial (default: a node's CPUs over the trials that share it, at least 1)",
    )
    p.add_argument(
        "--gpus-per-trial",
        type=typed("gpus_per_trial"),
        help="GPUs per trial, fractions allowed (default, if the cluster has GPUs: "
        "each model's own share from the model registry: half a GPU for small "
        "models, else one)",
    )
    p.add_argument(
        "--max-concurrent", type=typed("max_concurrent"), help="at most this many trials at once"
    )
    p.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        help="asha (default): stop weak trials early; fifo: run every trial to "
        "its own end (early stopping still applies; the default with --folds)",
    )
    p.add_argument(
        "--folds",
        type=typed("folds"),
        metavar="K",
        help="cross-validate: split the images into K stratified folds and run "
        "every variant once per fold, tested on that fold",
    )
    p.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="join this Ray cluster instead of starting one (default: $RAY_ADDRESS)",
    )
    p.add_argument(
        "--split-seed",
        type=typed("split_seed"),
        help="seed of the 8:1:1 split (default 0)",
    )
    p.add_argument("--split-file", help="reuse the split.csv of an earlier experiment")
    p.add_argument(
        "--config",
        help="a JSON file of config fields (e.g. a search's best_config.json); --set wins over it",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a trial-config field (repeatable; see --list-keys)",
    )
    p.add_argument(
        "--tracking",
        metavar="URI",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="log the sweep to this MLflow tracking server (default: "
        "$MLFLOW_TRACKING_URI; off when neither is set)",
    )
    p.add_argument(
        "--tracking-experiment",
        metavar="NAME",
        help="the MLflow experiment to log to (default: the study's name)",
    )
    return p


def run_sweep(sweep: Sweep, command: list[str]) -> int:
    """Prepare the data and the weights, start (or join) Ray, write the sweep's own files,
    run the trials and print the table."""
    from sweeps.driver.builder import build_tuner, restore_tuner
    from sweeps.driver.claim import claim_new, claim_resumed
    from sweeps.driver.plan import in_flight
    from sweeps.driver.prepare import check_weights, prepare_data
    from sweeps.driver.recorder import active, begin_sweep
    from sweeps.driver.seal import TUNER_PKL, Sealer, check_sealed, is_state
    from sweeps.experiment.tables import finish
    from trainables.core.ray_internals import after_tune_saves
    from trainables.data import split_csv

    if sweep.spec.tracking and redact(sweep.spec.tracking) != sweep.spec.tracking:
        # the password stays in this process's environment; everything that is recorded
        # or pickled (Tune pickles the sweep with its callbacks) holds the masked URI
        os.environ["MLFLOW_TRACKING_URI"] = sweep.spec.tracking
        sweep = replace(sweep, spec=replace(sweep.spec, tracking=redact(sweep.spec.tracking)))
    spec, store, cfgs = sweep.spec, sweep.store, sweep.plan.configs
    models = tuple(c.model for c in cfgs)
    concurrent = in_flight(sweep.plan, spec.max_concurrent)
    if not spec.address:  # checked before any work; a cluster is asked once joined
        per_trial = resources(
            spec.cpus_per_trial, spec.gpus_per_trial, local_resources(), models, concurrent
        )
    if spec.resume:  # before any work, and before Tune unpickles anything of it
        check_sealed(store, spec.trust_state)
    check_reachable(spec.address)
    if spec.tracking:
        from sweeps.sinks import tracking

        tracking.check(usable(spec.tracking), spec.tracking_experiment or sweep.space.name)
    handle, data_report = prepare_data(spec, cfgs)
    if spec.resume:
        check_same_data(store, handle.digest, data_report["root"])
    unavailable = check_weights(cfgs)
    # it, too, can fail (no room for its temporary folder)
    start_ray(spec.address, spec.niceness)
    # every input is checked: the experiment folder is claimed before anything is written
    if spec.resume:
        claim_resumed(store)
    else:
        claim_new(store, spec.overwrite, command)
    if spec.address:
        per_trial = resources(
            spec.cpus_per_trial, spec.gpus_per_trial, cluster_nodes(), models, concurrent
        )
    if not spec.resume:  # a resumed sweep's trials keep the threads they were given
        sweep = sweep.pin_threads(per_trial)
    sealer = Sealer(store)
    if spec.resume and spec.trust_state:  # trusted once, sealed as this user's from now on
        sealer.seal_stored(*(name for name in store.top_files() if is_state(name)))
    if spec.resume:
        print(f"resuming {store}", file=sys.stderr, flush=True)
        tuner = restore_tuner(sweep, handle, unavailable, per_trial)
    else:
        store.write_text(SPLIT_CSV, split_csv(handle, data_report))
        store.write_text(DATA_REPORT, json.dumps(data_report, indent=1))
        store.write_text(SWEEP_JSON, sweep.to_json(data_report, unavailable, handle.digest))
        tuner = build_tuner(sweep, handle, unavailable, per_trial)
        sealer.seal_stored(TUNER_PKL)  # the Tuner wrote it into the experiment
        how = "chosen by Optuna TPE" if sweep.plan.searched else "grid"
        pruning = f"ASHA grace {sweep.grace} epochs" if spec.scheduler == "asha" else "no pruning"
        threads = sweep.plan.param_space["threads"]
        print(
            f"sweep {sweep.space.name}: {sweep.plan.trials} trial(s), {how}, {pruning}, "
            f"max {sweep.max_epochs} epochs, {threads} thread(s) per trial -> {store}",
            file=sys.stderr,
            flush=True,
        )
    begin_sweep(store)
    after_tune_saves(sealer.seal_staged)
    with GracefulStop() as stop:
        try:
            tuner.fit()
        except Exception:
            recorder = active()
            if recorder is None or not recorder.fault:
                raise
        finally:
            after_tune_saves(None)
    # Ray's held-back log lines ("... [repeated 4x across cluster]") come out when it stops:
    # before the table, not below it
    stop_ray()
    recorder = active()
    code = finish(recorder, sweep.space, sweep.plan, store)
    if spec.folds and not recorder.fault:  # stopped too: the variants with every fold
        _out_of_fold(store, None if stop.signal is None else sweep.plan.trials // spec.folds)
    resume = f"python sweeps/run.py --resume '{store}'"
    if sealer.failed:  # Tune's last state reached the experiment unsealed (a full disk)
        resume += " --trust-state"
        print(
            f"warning: could not seal the sweep's Ray Tune state ({sealer.failed}): a "
            "--resume of it needs --trust-state",
            file=sys.stderr,
        )
    left = f"{sweep.plan.trials - recorder.finished()} of {sweep.plan.trials} trial(s) unfinished"
    if recorder.fault:
        print(
            f"error: the sweep stopped: a write failed ({recorder.fault}); {left}; fix "
            f"it (free space, permissions, the store), then resume: {resume}",
            file=sys.stderr,
        )
        return 1
    if stop.signal is not None:
        print(
            f"interrupted ({signal.Signals(stop.signal).name}): {left}, every finished one "
            f"is in the table; resume: {resume}",
            file=sys.stderr,
        )
        return stop.exit_code
    return code


def _out_of_fold(store, stopped_of: int | None = None) -> None:
    """A cross-validated sweep ends with each variant's out-of-fold scores over all images
    and the verdict (sweeps/analysis/folds.py). A stopped one (``stopped_of``: its number
    of variants) settles those whose folds all finished, and says how many those are in
    one line instead of a line for each of the others (verdict.md lists them); its
    ``--resume`` settles them all."""
    if store.is_uri:
        print(
            f"out-of-fold results: run python sweeps/confirm.py on a local copy of {store}",
            file=sys.stderr,
        )
        return
    from sweeps.analysis.folds import settle_experiment, show
    from sweeps.experiment.folder import load_experiment

    settled = settle_experiment(load_experiment(store.root))
    print()
    print(show(settled))
    if stopped_of is not None:
        print(
            f"out of fold: {len(settled.ranked)} of {stopped_of} variant(s) have a result on "
            "every fold so far (the others are listed in verdict.md); --resume settles them all",
            file=sys.stderr,
        )
        return
    for reason in settled.left_out:
        print(f"left out: {reason}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    return execute(args, ["sweeps/run.py", *(sys.argv[1:] if argv is None else argv)])


def execute(args, command: list[str]) -> int:
    """Run what the parsed command line asks (``command``: as recorded in the folder's
    claim)."""
    if args.list_spaces:
        from search_spaces import registry

        for name, space in registry().items():
            print(f"{name:24s} {space.description}")
        return 0
    if args.list_keys:
        from trainables.core.config import describe_keys

        print(describe_keys())
        return 0
    return study(SweepSpec.from_args(args), command)


def study(spec: SweepSpec, command: list[str]) -> int:
    """Run the sweep ``spec`` asks for: 0 when every trial ended well, 1 when some failed.
    The command line and the Python API (sweeps/api.py) both come here; ``command`` is
    what the experiment folder's claim records as its maker."""
    from trainables.core.log import show_lines

    show_lines()  # the library's lines: the images' decoding progress
    if spec.resume:
        spec = resumed(spec)
    spec.check()
    sweep = resolve(spec)
    if not spec.resume:  # before any work; checked again when the folder is claimed
        check_new(sweep.store, spec.overwrite)
        check_data_apart(sweep.store, resolve_data(spec.data))
        sweep.store.check_writable(spec.storage)
    return run_sweep(sweep, command)


def cli_main() -> None:
    cli.run(main, cleanup=stop_ray)


if __name__ == "__main__":
    cli.as_process(cli_main)
