"""The sweep as the user asked for it (``SweepSpec``, frozen, from the command line or from an
interrupted sweep's ``sweep.json``) and as it resolves (``Sweep``: the space, the overrides,
the plan of trials, the scheduler's settings, the store). ``sweep.json`` records both, and
everything after the sweep reads the study's shape from it, not from today's registry."""

from __future__ import annotations

import argparse
import difflib
import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from sweeps.driver.plan import Plan, make_plan
from sweeps.experiment.files import SPLIT_CSV, SWEEP_JSON
from sweeps.experiment.folder import read_sweep_json
from sweeps.experiment.redact import redact, usable
from sweeps.experiment.storage import Store
from trainables.core.config import check_overrides, load_config_file, parse_overrides
from trainables.core.errors import UserError, number_problem

SMOKE_IMAGES_PER_CLASS = 10
SMOKE_OVERRIDES = {"max_epochs": 2, "image_size": 32}
DEMO_OVERRIDES = {"image_size": 32}  # the demo digits are 8x8 scans: 224px would only cost time
DEFAULT_GRACE = 7  # ASHA's grace period for a space that sets none
SCHEDULERS = ("asha", "fifo")
# each numeric setting's type and range, checked alike for the command line's flags (their
# argparse types) and the Python API's arguments (SweepSpec.check)
NUMBERS: dict[str, tuple[type, dict[str, float]]] = {
    "max_failures": (int, {"low": 0}),
    "stall_timeout": (float, {"low": 0}),
    "niceness": (int, {"low": 0, "high": 19}),
    "num_samples": (int, {"low": 1}),
    "max_epochs": (int, {"low": 1}),
    "max_per_class": (int, {"low": 1}),
    "cpus_per_trial": (float, {"above": 0}),
    "gpus_per_trial": (float, {"low": 0}),
    "max_concurrent": (int, {"low": 1}),
    "folds": (int, {"low": 3, "high": 100}),
    "split_seed": (int, {"low": 0, "high": 2**32 - 1}),
}


@dataclass(frozen=True)
class SweepSpec:
    """Every command-line setting of one sweep."""

    space: str | None = None
    data: str | None = None
    storage: str = "runs"
    name: str | None = None
    overwrite: bool = False
    resume: str | None = None
    retry_errored: bool = False
    trust_state: bool = False  # resume: open Tune's state files though no seal of ours covers them
    max_failures: int = 2
    stall_timeout: float | None = None  # seconds; None: the watchdog's default; 0: never
    niceness: int = 0  # trial workers' niceness above the command's own (Ray's default: 15)
    num_samples: int | None = None
    max_epochs: int | None = None
    smoke: bool = False
    max_per_class: int | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    max_concurrent: int | None = None
    scheduler: str = "asha"
    folds: int | None = None  # cross-validation: every variant once per fold
    address: str | None = None
    split_seed: int | None = None
    split_file: str | None = None
    config: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # trial-config fields, typed
    tracking: str | None = None  # an MLflow tracking URI
    tracking_experiment: str | None = None  # the MLflow experiment (default: the study)

    @classmethod
    def build(cls, **settings: Any) -> SweepSpec:
        """The spec of these settings, each checked and named as the Python API takes it
        (``folds=5``; the command line shows ``--folds 5``). ``overrides``: trial-config
        fields as typed values (a list: a grid), checked when the sweep resolves. The
        scheduler is fifo with folds unless asha is asked for, which folds refuse."""
        known = {f.name for f in fields(cls)}
        for name in settings:
            if name not in known:
                near = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f"; did you mean `{near[0]}`?" if near else ""
                raise UserError(f"unknown setting {name!r}{hint}")
        for name, (kind, limits) in NUMBERS.items():  # (the command line's parser, too)
            value = settings.get(name)
            if value is not None and (problem := number_problem(value, kind, **limits)):
                raise UserError(f"`{name}`: {problem}")
        if settings.get("scheduler") not in (None, *SCHEDULERS):
            raise UserError(
                f"`scheduler={settings['scheduler']}`: not a scheduler; use "
                + " or ".join(SCHEDULERS)
            )
        settings["overrides"] = dict(settings.get("overrides") or {})
        if settings.get("folds") and settings.get("scheduler") == "asha":
            raise UserError(
                "`folds` runs each fold of a variant to its own end (fifo): ASHA "
                "would compare trials of different folds on different validation "
                "images and cut some folds of a variant; drop `scheduler=asha`"
            )
        if settings.get("scheduler") is None:
            settings["scheduler"] = "fifo" if settings.get("folds") else "asha"
        return cls(**settings)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SweepSpec:
        """The spec of a parsed command line (its ``--set`` items parsed into typed values)."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        values["overrides"] = parse_overrides(list(values.get("overrides") or ()))
        return cls.build(**values)

    def check(self) -> None:
        """What each setting alone cannot show: settings that conflict, names that cannot be
        folders."""
        if self.retry_errored and not self.resume:
            raise UserError("`retry_errored` only works with `resume=EXPERIMENT_DIR`")
        if self.trust_state and not self.resume:
            raise UserError("`trust_state` only works with `resume=EXPERIMENT_DIR`")
        if not self.space:
            raise UserError("no study given: pass `space=NAME` (see --list-spaces)")
        if self.name is not None:
            if self.name.strip(" .") == "" or "/" in self.name or "\\" in self.name:
                raise UserError(f"`name={self.name!r}`: use a plain folder name without '/'")
            if len(self.name.encode("utf-8")) > 200:
                raise UserError(
                    f"`name`: {len(self.name.encode('utf-8'))} bytes long; use a "
                    "name of at most 200 bytes (file systems refuse longer folder "
                    "names)"
                )
        if self.split_file and self.split_seed is not None:
            raise UserError(
                "`split_file` and `split_seed` conflict: a reused split has no "
                "seed; drop one of them"
            )


RESUME_CONFLICTS = (
    "space",
    "data",
    "name",
    "num_samples",
    "max_epochs",
    "config",
    "folds",
    "split_file",
    "split_seed",
    "max_per_class",
)


def resumed(cli: SweepSpec) -> SweepSpec:
    """The interrupted sweep's own spec (from its sweep.json), to continue it."""
    given = [f"`{k}`" for k in RESUME_CONFLICTS if getattr(cli, k) is not None]
    given += [f"`{k}`" for k in ("overrides", "smoke", "overwrite") if getattr(cli, k)]
    if given:
        raise UserError(
            f"`resume` conflicts with {', '.join(given)}: a resumed sweep keeps "
            "its own settings; drop them"
        )
    store = Store.from_location(cli.resume)
    saved = read_sweep_json(store, "`resume`")
    try:
        known = {f.name for f in fields(SweepSpec)}
        args = {k: v for k, v in saved["args"].items() if k in known}
        saved_overrides = args.get("overrides") or {}
        if isinstance(saved_overrides, list):  # a sweep.json of an earlier version: --set text
            saved_overrides = parse_overrides(saved_overrides)
        spec = replace(SweepSpec(**args), overrides=dict(saved_overrides))
    except (KeyError, TypeError, AttributeError) as exc:
        raise UserError(
            f"`resume={store}`: {SWEEP_JSON} lacks the sweep's settings ({exc}); "
            "start the sweep anew"
        ) from None
    spec = replace(
        spec,
        resume=cli.resume,
        retry_errored=cli.retry_errored,
        trust_state=cli.trust_state,
        storage=store.storage_path,
        name=store.name,
        overwrite=False,
        address=cli.address,
        tracking=usable(spec.tracking, cli.tracking),
    )
    # replay the very split the sweep started with: its own split.csv, never the file a
    # --split-file named (it may have changed or gone since); only a root split into
    # train/ val/ test/ folders is read as it is
    if not saved.get("presplit") or args.get("split_file"):
        spec = replace(spec, split_file=_local_copy(store, SPLIT_CSV), split_seed=None)
    return spec


def check_same_data(store: Store, digest: str, root: str) -> None:
    """A resumed sweep must see the images it began with: its finished trials were scored on
    them and its unfinished ones go on with them."""
    began = read_sweep_json(store, "`resume`").get("data_digest")
    if began and began != digest:  # (sweeps of older versions did not record it)
        raise UserError(
            f"`resume={store}`: the images under {root} changed since the sweep "
            "began (their contents differ); restore them, or start a new sweep "
            f"(`split_file={store}/split.csv` reuses its split)"
        )


def _local_copy(store: Store, relative: str) -> str:
    """A local file with the content of ``relative`` in the store (the store's own file when
    it is local)."""
    if not store.is_uri:
        return f"{store.root}/{relative}"
    import os
    import tempfile

    handle, path = tempfile.mkstemp(suffix=f"-{relative}")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(store.read_text(relative))
    return path


@dataclass(frozen=True)
class Sweep:
    """The spec resolved: what will run, and where."""

    spec: SweepSpec
    space: Any  # search_spaces.Space
    overrides: dict[str, Any]
    plan: Plan
    name: str
    store: Store
    grace: int  # ASHA's grace period, in epochs
    max_epochs: int  # the longest trial, ASHA's horizon

    @property
    def variant_keys(self) -> tuple[str, ...]:
        """The space's variant keys, then every key the command line made a grid of."""
        extra = [
            k
            for k, v in self.overrides.items()
            if isinstance(v, list) and k not in self.space.variant_keys
        ]
        return (*self.space.variant_keys, *extra)

    def pin_threads(self, per_trial: dict[str, float]) -> Sweep:
        """The sweep with every trial's compute threads fixed: as set (``--set threads=N``),
        else the trial's CPU share now, recorded in the trials' configs so that a resumed
        trial or a re-run computes the same sums, whatever else shares the machine then."""
        if self.plan.param_space.get("threads", 0) not in (0, None):
            return self
        threads = max(1, int(per_trial.get("cpu", 1)))
        return replace(
            self, plan=replace(self.plan, param_space={**self.plan.param_space, "threads": threads})
        )

    def variant(self, config: dict) -> str:
        from trainables.model.record import variant_name

        return variant_name(config, self.variant_keys)

    def stop_points(self) -> tuple[int, ...]:
        """The epochs at which the scheduler may stop a trial (ASHA's rungs)."""
        if self.spec.scheduler != "asha":
            return ()
        points, rung = [], self.grace
        while rung < self.max_epochs:
            points.append(rung)
            rung *= self.space.reduction_factor
        return tuple(points)

    def to_json(self, data_report: dict, unavailable: tuple[str, ...], digest: str) -> str:
        return json.dumps(
            {
                "args": {
                    **asdict(self.spec),
                    "name": self.name,
                    "tracking": redact(self.spec.tracking),
                },
                "space": self.space.name,
                "variant_keys": list(self.variant_keys),
                "overrides": self.overrides,
                "plan": {
                    "trials": self.plan.trials,
                    "searched": self.plan.searched,
                    "varied": self.plan.varied,
                    "scheduler": self.spec.scheduler,
                    "threads": self.plan.param_space.get("threads"),
                    "folds": self.spec.folds,
                    "grace": self.grace,
                    "max_epochs": self.max_epochs,
                    "reduction_factor": self.space.reduction_factor,
                },
                "presplit": data_report["presplit"],
                "data": data_report["root"],
                "data_digest": digest,  # of the image files' contents: --resume checks it
                "pretrained_unavailable": list(unavailable),
            },
            indent=1,
        )


def asha_grace(space, configs) -> int:
    """ASHA's grace period: the space's own (else DEFAULT_GRACE), never shorter than the
    earliest epoch at which any trial's strategy may be compared, never longer than the
    longest trial."""
    from trainables.recipe.strategies import create_strategy

    earliest = max(create_strategy(c).earliest_comparison for c in configs)
    longest = max(c.max_epochs for c in configs)
    return min(longest, max(space.grace_period or DEFAULT_GRACE, earliest))


def resolve(spec: SweepSpec) -> Sweep:
    """Space, overrides and plan, every trial config validated; nothing is written."""
    from search_spaces import get_space

    space = get_space(spec.space)
    overrides = {
        **(DEMO_OVERRIDES if spec.data is None else {}),
        **(SMOKE_OVERRIDES if spec.smoke else {}),
    }
    if spec.config:
        overrides.update(load_config_file(spec.config))
    overrides.update(check_overrides(spec.overrides))
    if spec.max_epochs:  # caps every trial, whatever else set max_epochs
        overrides["max_epochs"] = spec.max_epochs
    if "fold" in overrides:
        raise UserError("the fold is not a config key: pass `folds=K` to cross-validate")
    plan = make_plan(space, overrides, spec.num_samples, spec.smoke, spec.folds)
    name = spec.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Sweep(
        spec,
        space,
        overrides,
        plan,
        name,
        Store(spec.storage, name),
        asha_grace(space, plan.configs),
        max(c.max_epochs for c in plan.configs),
    )
