"""From a space and the command line to what Ray Tune runs: the param space, the trial
configs to validate before anything starts, and the searcher."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from search_spaces import is_domain, is_grid
from trainables.core.config import TrialConfig, with_current_keys
from trainables.core.errors import UserError

SMOKE_BUDGET = 4  # trials of a searched space under --smoke


def _is_searchable(value: Any) -> bool:
    """A distribution a searcher can sample (not a sample_from that depends on the config)."""
    from ray.tune.search.sample import Function

    return is_domain(value) and not isinstance(value, Function)


@dataclass(frozen=True)
class Plan:
    param_space: dict[str, Any]
    configs: list[TrialConfig]  # every grid point, with one draw of each distribution
    trials: int  # how many trials the sweep will run
    num_samples: int  # Tune's num_samples
    searched: bool  # a searcher (TPE) picks the points
    varied: list[str]  # keys whose values differ between trials
    points: list[dict[str, Any]] = ()  # a search's first trials, tried before TPE picks


def make_plan(
    space,
    overrides: dict[str, Any],
    num_samples: int | None,
    smoke: bool = False,
    folds: int | None = None,
) -> Plan:
    """Merge the space with the overrides (an override replaces a grid or a distribution)
    and decide how many trials run: grid points x seeds (x folds), or a searcher's budget."""
    from ray import tune

    grids = {k: tune.grid_search(v) for k, v in overrides.items() if isinstance(v, list)}
    param_space = {**with_current_keys(space.param_space), **overrides, **grids}
    if space.expand is not None:  # a space whose grid depends on the settings
        param_space = space.expand(param_space)
    searched = space.search == "tpe" and any(map(_is_searchable, param_space.values()))
    if searched:  # --smoke shrinks a search to SMOKE_BUDGET trials, unless told how many
        budget = num_samples or (min(space.budget, SMOKE_BUDGET) if smoke else space.budget)
        param_space.setdefault("seed", TrialConfig.seed)
    else:
        first = int(overrides.get("seed", TrialConfig.seed))
        seeds = list(range(first, first + (num_samples or 1)))
        param_space["seed"] = tune.grid_search(seeds) if len(seeds) > 1 else seeds[0]
    if folds:
        if searched:
            raise UserError(
                f"`folds`: the {space.name} study is a search; cross-validate "
                "its result instead: `space=single` `config=runs/NAME/best_config.json` "
                "`folds=K`"
            )
        param_space["fold"] = tune.grid_search(list(range(folds)))
    points = first_points(space, param_space) if searched else []
    configs = validate(grid_configs(param_space))
    validate([{**configs[0].to_dict(), **point} for point in points])
    varied = [k for k, v in param_space.items() if is_grid(v) or is_domain(v)]
    return Plan(
        param_space,
        configs,
        budget if searched else len(configs),
        budget if searched else 1,
        searched,
        varied,
        points,
    )


def first_points(space, param_space: dict[str, Any]) -> list[dict[str, Any]]:
    """The space's ``points`` (the trials a search runs first, such as the linear probe of
    the recipe study), each cut to the keys still searched: a key the command line fixed
    keeps its value. A point left with nothing to say is dropped. Optuna wants a value of
    every searched key in each point: a study whose point misses one is a mistake of the
    study's module, said in one line."""
    searched = {k for k, v in param_space.items() if _is_searchable(v)}
    given = getattr(space, "points", ())
    points = []
    for point in given(param_space) if callable(given) else given:
        kept = {k: v for k, v in point.items() if k in searched}
        missing = sorted(searched - set(kept))
        if kept and missing:
            raise UserError(
                f"the {space.name} study's first point has no value for {', '.join(missing)}: "
                "add them to its points in search_spaces/"
            )
        if kept:
            _check_in_search(space.name, kept, param_space)
        if kept and kept not in points:
            points.append(kept)
    return points


def _check_in_search(name: str, point: dict[str, Any], param_space: dict[str, Any]) -> None:
    """Refuse, in one line, a point value that Optuna would not take for its key (outside a
    choice's categories or a range's bounds, as Ray's search converts them: a randint's
    upper bound is exclusive): Optuna fails with a traceback when the point's trial is
    asked for."""
    from ray.tune.search.optuna import OptunaSearch

    optuna_space = OptunaSearch.convert_search_space({k: param_space[k] for k in point})
    for key, value in point.items():
        drawn = optuna_space[key]
        if hasattr(drawn, "choices"):
            inside, what = value in drawn.choices, "one of " + ", ".join(map(str, drawn.choices))
        else:
            inside, what = drawn.low <= value <= drawn.high, f"{drawn.low} to {drawn.high}"
        if not inside:
            raise UserError(
                f"a first point of the {name} study sets {key}={value!r}, outside what the "
                f"search draws ({what}): widen the choice or change the point in "
                "search_spaces/"
            )


def grid_configs(param_space: dict[str, Any]) -> list[dict[str, Any]]:
    """Every grid point of ``param_space``, other Tune domains sampled once (a
    ``sample_from`` is called with the point, as Tune does), so each can be validated."""
    from ray.tune.search.sample import Function

    fixed = {k: v for k, v in param_space.items() if not (is_grid(v) or is_domain(v))}
    grids = {k: v["grid_search"] for k, v in param_space.items() if is_grid(v)}
    points = []
    for combo in itertools.product(*grids.values()):
        point = {**fixed, **dict(zip(grids, combo))}
        for key, value in param_space.items():
            if isinstance(value, Function):
                point[key] = value.func(point)
            elif is_domain(value):
                point[key] = value.sample()
        points.append(point)
    return points


def validate(configs: list[dict]) -> list[TrialConfig]:
    """TrialConfig for every point, and the model checks; raises UserError on the first bad one."""
    from trainables.model.factory import check_input_size, check_model
    from trainables.model.record import preprocess_for
    from trainables.model.sizes import Verdicts
    from trainables.recipe.strategies import create_strategy

    checked, sized, verdicts = [], set(), Verdicts()
    for config in configs:
        cfg = TrialConfig.from_dict(config)
        aux = create_strategy(cfg).aux_heads
        check_model(cfg.model, aux, cfg.pretrained, cfg.weights, cfg.taps)
        shape = (cfg.model, aux, preprocess_for(cfg).image_size)
        if shape not in sized:
            sized.add(shape)
            check_input_size(*shape, verdicts)
        checked.append(cfg)
    return checked


def in_flight(plan: Plan, max_concurrent: int | None) -> int:
    """How many trials run at once: ``--max-concurrent`` where given; for a searched plan
    otherwise few enough that the search learns from finished ones (a fifth of the
    budget, between 1 and 4); for a grid, all of them (as the nodes allow)."""
    if max_concurrent:
        return min(max_concurrent, plan.trials)
    return max(1, min(4, plan.trials // 5)) if plan.searched else plan.trials


def create_searcher(
    plan: Plan, seed: int, journal: str | None = None, max_concurrent: int | None = None
):
    """Optuna's TPE sampler, with ``in_flight`` trials at most (Tune refuses a limit of
    its own beside this one). With ``journal``, the Optuna study lives in that journal
    file (optuna-dashboard opens it)."""
    if not plan.searched:
        return None
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = None
    if journal:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(journal))
    searcher = ResumableOptunaSearch(
        sampler=optuna.samplers.TPESampler(seed=seed),
        points_to_evaluate=list(plan.points) or None,
        seed=seed,
        storage=storage,
        study_name="sweep" if storage else None,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=in_flight(plan, max_concurrent))


def _resumable_optuna_search():
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    class ResumableOptunaSearch(OptunaSearch):
        """Ray Tune's OptunaSearch, whose study may outlive its driver (a journal file): a
        trial asked for just before the driver died is in the study but in no state Tune
        saved, so Tune never runs it again. Restored, this searcher records such a trial as
        failed instead of leaving it running in the study forever."""

        def restore(self, checkpoint_path: str):
            super().restore(checkpoint_path)
            owned = {trial._trial_id for trial in self._ot_trials.values()}
            for lost in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if lost._trial_id not in owned:
                    self._ot_study.tell(lost.number, state=TrialState.FAIL)

    return ResumableOptunaSearch


def ResumableOptunaSearch(**kwargs):  # noqa: N802 - a class, built when Optuna is imported
    return _resumable_optuna_search()(**kwargs)
