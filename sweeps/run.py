"""Run a study as one Ray Tune sweep.

    python sweeps/run.py --space googlenet_strategies [--data DIR] [--smoke] [--set KEY=VALUE ...]
    python sweeps/run.py --list-spaces

Everything a user can get wrong is checked before anything is written or Ray starts; such a
mistake ends in one line on stderr and exit status 2. A sweep whose trials failed still
writes its table and exits with status 1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from sweeps.cli import run as run_command
from sweeps.cluster import cluster_nodes, local_resources, resources, start_ray
from sweeps.plan import make_plan
from sweeps.storage import Store
from trainables import metrics as M
from trainables.config import TrialConfig, describe_keys, load_config_file, parse_overrides
from trainables.errors import UserError

SMOKE_IMAGES_PER_CLASS = 10
SWEEP_FILE = "sweep.json"  # the run's resolved arguments, for --resume
SMOKE_OVERRIDES = {"max_epochs": 2, "image_size": 32}
DEMO_OVERRIDES = {"image_size": 32}  # the demo digits are 8x8 scans: 224px would only cost time


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        raise UserError(f"{message} (see --help)")


def build_parser() -> Parser:
    p = Parser(prog="python sweeps/run.py", description=__doc__.split("\n\n")[0],
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", help="the study to run (see --list-spaces)")
    p.add_argument("--list-spaces", action="store_true", help="list the studies and exit")
    p.add_argument("--list-keys", action="store_true", help="list the --set keys and exit")
    p.add_argument("--data", help="image folder (one subfolder per class) or a root with "
                                  "train/ val/ test/; default: the embedded demo digits")
    p.add_argument("--storage", default="runs", help="where experiments go (default: ./runs)")
    p.add_argument("--name", help="experiment name (default: SPACE-YYYYmmdd-HHMMSS)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing experiment of the same name")
    p.add_argument("--resume", metavar="EXPERIMENT_DIR",
                   help="continue an interrupted sweep: finished trials stay, unfinished ones "
                        "go on from their checkpoints")
    p.add_argument("--retry-errored", action="store_true",
                   help="with --resume: also rerun trials that ended in error")
    p.add_argument("--max-failures", type=int, default=2,
                   help="retry a trial whose worker died up to N times, from its last "
                        "checkpoint (default 2)")
    p.add_argument("--num-samples", type=int,
                   help="grid spaces: repeat every variant with this many seeds (default 1); "
                        "searched spaces: the number of trials (default: the space's budget)")
    p.add_argument("--max-epochs", type=int, help="cap every trial at this many epochs")
    p.add_argument("--smoke", action="store_true",
                   help=f"shrink to seconds: {SMOKE_IMAGES_PER_CLASS} images per class, 32px, "
                        "2 epochs")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float,
                   help="GPUs per trial, fractions allowed (default, if the cluster has GPUs: "
                        "0.5 when every model is small (small_cnn, resnet18, googlenet, "
                        "mobilenet_v2), else 1)")
    p.add_argument("--max-concurrent", type=int, help="at most this many trials at once")
    p.add_argument("--scheduler", choices=("asha", "fifo"), default="asha",
                   help="asha (default): stop weak trials early; fifo: run every trial to "
                        "its own end (early stopping still applies)")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="join this Ray cluster instead of starting one (default: $RAY_ADDRESS)")
    p.add_argument("--split-seed", type=int, help="seed of the 8:1:1 split (default 0)")
    p.add_argument("--split-file", help="reuse the split.csv of an earlier experiment")
    p.add_argument("--config", help="a JSON file of config fields (e.g. a search's "
                                    "best_config.json); --set wins over it")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a trial-config field (repeatable; see --list-keys)")
    return p


# ------------------------------------------------------------------ checks before any write

def check_weights(cfgs: list[TrialConfig]) -> tuple[str, ...]:
    """Fetch each model's pretrained weights once, before the trials ask for them.
    Returns the models whose weights cannot be had (trials then train from scratch)."""
    from trainables.models import (fetch_pretrained, hub_reachable, is_timm_model,
                                   use_hub_offline, weights_unavailable)

    wanted = sorted({c.model for c in cfgs if c.pretrained != "false"})
    if any(map(is_timm_model, wanted)) and not hub_reachable():
        use_hub_offline()
    unavailable = []
    for model in wanted:
        reason = fetch_pretrained(model)
        if reason is None:
            continue
        if any(c.model == model and c.pretrained == "true" for c in cfgs):
            raise weights_unavailable(model, reason)
        print(f"warning: no pretrained weights for {model} ({reason}); its trials train from "
              f"random initialisation (pretrained=False in the table)", file=sys.stderr)
        unavailable.append(model)
    return tuple(unavailable)


def check_storage(store: Store, storage_arg: str, overwrite: bool = False) -> None:
    if not store.is_uri and Path(store.root).is_file():
        raise UserError(f"experiment path {store} is a file; choose another --name")
    if store.has_content() and not overwrite:
        raise UserError(f"experiment {store} already exists; choose another --name "
                        "or pass --overwrite to replace it")
    store.check_writable(storage_arg)


RESUME_CONFLICTS = ("space", "data", "name", "num_samples", "max_epochs", "config",
                    "split_file", "split_seed")


def resumed_args(cli) -> argparse.Namespace:
    """The interrupted run's own arguments (from its sweep.json), to continue it."""
    given = [f"--{k.replace('_', '-')}" for k in RESUME_CONFLICTS if getattr(cli, k) is not None]
    given += ["--set"] * bool(cli.overrides) + ["--smoke"] * cli.smoke \
        + ["--overwrite"] * cli.overwrite
    if given:
        raise UserError(f"--resume conflicts with {', '.join(given)}: a resumed sweep keeps "
                        "its own settings; drop them")
    store = Store.from_location(cli.resume)
    if not store.exists(SWEEP_FILE):
        raise UserError(f"--resume {store}: no {SWEEP_FILE} there; point it at an "
                        "experiment folder that sweeps/run.py wrote")
    saved = json.loads(store.read_text(SWEEP_FILE))
    args = argparse.Namespace(**saved["args"])
    args.resume, args.retry_errored = cli.resume, cli.retry_errored
    args.storage, args.name, args.overwrite = store.storage_path, store.name, False
    args.address = cli.address
    if not saved.get("presplit"):  # replay the very split the sweep started with
        args.split_file, args.split_seed = _local_copy(store, "split.csv"), None
    return args


def _local_copy(store: Store, relative: str) -> str:
    """A local file with the content of ``relative`` in the store (the store's own file when
    it is local)."""
    if not store.is_uri:
        return f"{store.root}/{relative}"
    import tempfile

    handle, path = tempfile.mkstemp(suffix=f"-{relative}")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(store.read_text(relative))
    return path


def check_args(args) -> None:
    if args.retry_errored and not args.resume:
        raise UserError("--retry-errored only works with --resume EXPERIMENT_DIR")
    if args.max_failures < 0:
        raise UserError(f"--max-failures {args.max_failures}: must be 0 or more")
    if not args.space:
        raise UserError("no study given: pass --space NAME (see --list-spaces)")
    if args.num_samples is not None and args.num_samples < 1:
        raise UserError(f"--num-samples {args.num_samples}: must be at least 1")
    if args.max_epochs is not None and args.max_epochs < 1:
        raise UserError(f"--max-epochs {args.max_epochs}: must be at least 1")
    if args.cpus_per_trial <= 0:
        raise UserError(f"--cpus-per-trial {args.cpus_per_trial}: must be above 0")
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        raise UserError(f"--gpus-per-trial {args.gpus_per_trial}: must be 0 or more")
    if args.name is not None and (args.name.strip(" .") == "" or "/" in args.name
                                  or "\\" in args.name):
        raise UserError(f"--name {args.name!r}: use a plain folder name without '/'")
    if args.split_file and args.split_seed is not None:
        raise UserError("--split-file and --split-seed conflict: a reused split has no seed; "
                        "drop one of them")


# ------------------------------------------------------------------ the sweep

def trial_name(space):
    def name(trial) -> str:
        label = f"{space.variant(trial.config)}_s{trial.config.get('seed', 0)}_{trial.trial_id}"
        return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
    return name


def asha_grace(space, cfgs: list[TrialConfig]) -> int:
    """ASHA's grace period: the space's own (else ``unfreeze_epoch + 2``), never less than
    ``unfreeze_epoch + 2`` for a gradual_unfreeze trial (so its backbone has trained before
    ASHA compares it), never more than the longest trial."""
    unfrozen = max((c.unfreeze_epoch + 2 for c in cfgs if c.strategy == "gradual_unfreeze"),
                   default=0)
    grace = space.grace_period or max(c.unfreeze_epoch for c in cfgs) + 2
    return min(max(c.max_epochs for c in cfgs), max(grace, unfrozen))


def run_sweep(args, space, plan, handle, unavailable: tuple[str, ...], store: Store,
              per_trial: dict) -> int:
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from sweeps.plan import create_searcher
    from sweeps.progress import ProgressCallback
    from sweeps.results import ResultTableCallback, finish
    from sweeps.tb_logging import TensorBoardCallback
    from trainables.trainable import train_trial

    # Our TensorBoard callback replaces Tune's TBX logger; keep its CSV/JSON loggers.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    # Keeping one checkpoint per trial makes Tune snapshot the experiment state after every
    # checkpoint, and warn about it each time; the snapshot is a small JSON write.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    cfgs = plan.configs
    max_t = max(c.max_epochs for c in cfgs)
    grace = asha_grace(space, cfgs)
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=grace,
                              reduction_factor=space.reduction_factor) \
        if args.scheduler == "asha" else FIFOScheduler()
    table = ResultTableCallback(store, space.variant, plan.varied,
                                aggregate=not plan.searched)
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, data=handle, unavailable_weights=unavailable),
        per_trial)
    name = trial_name(space)
    if args.resume:
        if not tune.Tuner.can_restore(store.location):
            raise UserError(f"--resume {store}: no Ray Tune experiment state there "
                            "(the sweep stopped before its first trial started); start it anew")
        print(f"resuming {store}", file=sys.stderr, flush=True)
        tuner = tune.Tuner.restore(store.location, trainable, resume_unfinished=True,
                                   resume_errored=args.retry_errored, restart_errored=False)
        return finish(tuner.fit(), space, plan, store)
    tuner = tune.Tuner(
        trainable,
        param_space=plan.param_space,
        tune_config=tune.TuneConfig(
            metric=M.METRIC, mode=M.MODE, scheduler=scheduler, num_samples=plan.num_samples,
            search_alg=create_searcher(plan, seed=cfgs[0].seed),
            max_concurrent_trials=args.max_concurrent, reuse_actors=True,
            trial_name_creator=name, trial_dirname_creator=name),
        run_config=tune.RunConfig(
            name=store.name, storage_path=store.storage_path,
            callbacks=[CSVLoggerCallback(), JsonLoggerCallback(),
                       TensorBoardCallback(plan.varied, space.variant), table,
                       ProgressCallback(space.variant, plan.trials)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=args.max_failures),
            verbose=0),  # ProgressCallback prints one line per epoch instead
    )
    how = "chosen by Optuna TPE" if plan.searched else "grid"
    pruning = f"ASHA grace {grace} epochs" if args.scheduler == "asha" else "no pruning"
    print(f"sweep {space.name}: {plan.trials} trial(s), {how}, {pruning}, "
          f"max {max_t} epochs -> {store}", file=sys.stderr, flush=True)
    return finish(tuner.fit(), space, plan, store)


def prepare_data(args, cfgs: list[TrialConfig]):
    from trainables import data as D
    from trainables.transforms import resolve_preprocess

    cache_dir = D.default_cache_dir()
    root = args.data if args.data is not None else D.demo_root(cache_dir)
    source = D.discover(root)
    if args.smoke:
        source = D.limit_per_class(source, SMOKE_IMAGES_PER_CLASS)
    if args.split_file:
        if source.presplit:
            raise UserError(f"--split-file conflicts with --data {source.root}, which is "
                            "already split into train/ val/ test/; drop --split-file")
        source = D.apply_split_file(source, args.split_file)
    sizes = sorted({(p.load_size, p.interpolation) for p in map(resolve_preprocess, cfgs)})
    handle, data_report = D.prepare(source, sizes[0][0], cache_dir,
                                    split_seed=args.split_seed or 0, interpolation=sizes[0][1])
    for load_size, interpolation in sizes[1:]:
        handle.images(load_size, interpolation, progress=True)  # here, not in racing trials
    skipped = data_report["images_skipped"]
    print(f"data: {data_report['images_used']} images in {len(handle.class_names)} classes "
          f"from {source.root}" + (f"; skipped {skipped} unreadable (see data_report.json)"
                                   if skipped else ""), file=sys.stderr)
    for line in data_warnings(data_report):
        print(f"warning: {line}", file=sys.stderr)
    return handle, data_report


IMBALANCE_WARNING_RATIO = 3.0


def data_warnings(report: dict) -> list[str]:
    """What in the data deserves a look before trusting the table."""
    lines = []
    if report["leakage"]:
        lines.append(f"{len(report['leakage'])} image(s) appear in more than one split (same "
                     "bytes): test scores are inflated; see 'leakage' in data_report.json")
    if report["label_conflicts"]:
        lines.append(f"{len(report['label_conflicts'])} image(s) appear under different "
                     "classes; see 'label_conflicts' in data_report.json")
    if report["imbalance_ratio"] >= IMBALANCE_WARNING_RATIO:
        lines.append(f"classes are imbalanced (largest/smallest training class = "
                     f"{report['imbalance_ratio']:g}); watch test_macro_f1, and consider "
                     "--set objective=weighted_ce or --set sampler=balanced")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_spaces:
        from search_spaces import registry

        for name, space in registry().items():
            print(f"{name:24s} {space.description}")
        return 0
    if args.list_keys:
        print(describe_keys())
        return 0
    if args.resume:
        args = resumed_args(args)
    check_args(args)
    from search_spaces import get_space
    from trainables import data as D

    space = get_space(args.space)
    overrides = {**(DEMO_OVERRIDES if args.data is None else {}),
                 **(SMOKE_OVERRIDES if args.smoke else {})}
    if args.max_epochs:
        overrides["max_epochs"] = args.max_epochs
    if args.config:
        overrides.update(load_config_file(args.config))
    overrides.update(parse_overrides(args.overrides))
    plan = make_plan(space, overrides, args.num_samples, args.smoke)
    cfgs = plan.configs
    if not args.address:  # check before any work; a cluster is asked once joined
        resources(args, local_resources(), tuple(c.model for c in cfgs))
    name = args.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    store = Store(args.storage, name)
    if not args.resume:
        check_storage(store, args.storage, args.overwrite)
    handle, data_report = prepare_data(args, cfgs)
    unavailable = check_weights(cfgs)
    start_ray(args.address)
    per_trial = resources(args, cluster_nodes(), tuple(c.model for c in cfgs))

    if not args.resume:
        if args.overwrite:
            store.remove()
        store.write_text("split.csv", D.split_csv(handle, data_report))
        store.write_text("data_report.json", json.dumps(data_report, indent=1))
        store.write_text(SWEEP_FILE, json.dumps({
            "args": {**vars(args), "name": name}, "space": space.name, "overrides": overrides,
            "presplit": data_report["presplit"], "data": data_report["root"],
            "pretrained_unavailable": list(unavailable)}, indent=1))
    return run_sweep(args, space, plan, handle, unavailable, store, per_trial)


def cli() -> None:
    run_command(main)


if __name__ == "__main__":
    cli()
