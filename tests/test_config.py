import pytest

from search_spaces import registry
from sweeps.driver.plan import grid_configs, validate
from trainables.core.config import (
    FIELD_TYPES,
    OBJECTIVES,
    TrialConfig,
    describe_keys,
    load_config_file,
    parse_overrides,
)
from trainables.core.errors import UserError


def test_defaults_validate_and_round_trip():
    cfg = TrialConfig()
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_key_is_rejected_with_a_suggestion():
    with pytest.raises(UserError, match="unknown config key 'lrr': did you mean 'lr'"):
        TrialConfig.from_dict({"lrr": 0.1})
    with pytest.raises(UserError, match="unknown config key 'learning_rate'"):
        parse_overrides(["learning_rate=0.1"])


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_objective_expands_in_one_place(name):
    cfg = TrialConfig.from_dict({"objective": name})
    for key, value in OBJECTIVES[name].items():
        assert getattr(cfg, key) == value


def test_objective_presets_match_the_study():
    assert TrialConfig.from_dict({"objective": "ls_plateau"}).lr_schedule == "plateau"
    assert TrialConfig.from_dict({"objective": "ls_plateau"}).label_smoothing == 0.1
    assert TrialConfig.from_dict({"objective": "ce"}).label_smoothing == 0.0


def test_explicit_key_beats_preset():
    cfg = TrialConfig.from_dict({"objective": "ls_plateau", "lr_schedule": "cosine"})
    assert cfg.lr_schedule == "cosine" and cfg.label_smoothing == 0.1


def test_the_old_name_of_the_lr_schedule_key_is_read_as_the_new_one_with_a_warning(tmp_path):
    """``scheduler`` was both the learning-rate schedule's key and Tune's --scheduler: the
    key is ``lr_schedule`` now, and the old name, from --set, --config, a study's space or
    an experiment recorded before the rename, still means it, with a warning."""
    import json
    from types import SimpleNamespace

    from sweeps.driver.plan import make_plan

    with pytest.warns(FutureWarning, match="config key 'scheduler' is now 'lr_schedule'"):
        assert TrialConfig.from_dict({"scheduler": "cosine"}).lr_schedule == "cosine"
    with pytest.warns(FutureWarning):
        assert parse_overrides(["scheduler=[step,none]"]) == {"lr_schedule": ["step", "none"]}
    old = tmp_path / "best_config.json"
    old.write_text(json.dumps({"scheduler": "plateau", "lr": 0.01}))
    with pytest.warns(FutureWarning):
        assert load_config_file(str(old)) == {"lr_schedule": "plateau", "lr": 0.01}
    with (
        pytest.raises(UserError, match="'scheduler' and 'lr_schedule' are one setting"),
        pytest.warns(FutureWarning),
    ):
        TrialConfig.from_dict({"scheduler": "cosine", "lr_schedule": "step"})
    space = SimpleNamespace(
        name="old",
        param_space={"model": "small_cnn", "scheduler": "none"},
        expand=None,
        search="grid",
        budget=1,
    )
    with pytest.warns(FutureWarning):
        plan = make_plan(space, {"lr": 0.01}, None)
    assert "scheduler" not in plan.param_space and plan.configs[0].lr_schedule == "none"
    assert "lr_schedule" in describe_keys() and "\nscheduler " not in describe_keys()
    # a trial recorded before the rename (export, predict, confirm read its record)
    from trainables.model.factory import ModelBuild
    from trainables.model.record import Preprocess, TrialRecord

    recorded = TrialRecord(
        "v",
        {"scheduler": "none", "lr": 0.01},
        ModelBuild("small_cnn", 3),
        Preprocess(32, 37, "bilinear", (0.5,) * 3, (0.25,) * 3),
        ("a", "b", "c"),
        {},
    ).to_json()
    with pytest.warns(FutureWarning):
        assert TrialRecord.from_json(recorded).config == {"lr_schedule": "none", "lr": 0.01}


def test_overrides_are_typed():
    assert parse_overrides(["lr=1e-3", "batch_size=64", "amp=false", "pretrained=TRUE"]) == {
        "lr": 1e-3,
        "batch_size": 64,
        "amp": False,
        "pretrained": "true",
    }


@pytest.mark.parametrize(
    "item, message",
    [
        ("batch_size=abc", "bad value batch_size='abc': expected int"),
        ("batch_size=1.5", "expected int"),
        ("amp=maybe", "bad value amp='maybe': expected bool"),
        ("lr", "write it as KEY=VALUE"),
    ],
)
def test_bad_override_names_the_key(item, message):
    with pytest.raises(UserError, match=message):
        parse_overrides([item])


@pytest.mark.parametrize(
    "config, message",
    [
        ({"strategy": "frozen"}, "bad value strategy='frozen': choose one of"),
        ({"lr": -1.0}, "bad value lr=-1.0: must lie in"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"objective": "mse"}, "bad value objective='mse'"),
    ],
)
def test_bad_values_are_rejected(config, message):
    with pytest.raises(UserError, match=message):
        TrialConfig.from_dict(config)


def test_numpy_values_from_a_search_space_are_coerced():
    np = pytest.importorskip("numpy")
    cfg = TrialConfig.from_dict({"lr": np.float64(0.01), "batch_size": np.int64(16)})
    assert type(cfg.lr) is float and type(cfg.batch_size) is int


@pytest.mark.parametrize("name", list(registry()))
def test_every_space_key_is_a_config_field(name):
    space = registry()[name]
    assert set(space.param_space) <= set(FIELD_TYPES)
    assert set(space.variant_keys) <= set(FIELD_TYPES)


@pytest.mark.parametrize("name", list(registry()))
def test_every_grid_point_of_every_space_validates(name):
    from sweeps.driver.plan import make_plan

    space = registry()[name]
    param_space = space.expand(space.param_space) if space.expand else space.param_space
    configs = grid_configs(param_space)
    assert configs
    assert len(validate(configs)) == len(configs)
    assert len(make_plan(space, {}, None).configs) == len(configs)


def test_googlenet_strategies_is_the_twelve_variant_grid():
    space = registry()["googlenet_strategies"]
    configs = grid_configs(space.param_space)
    variants = {space.variant(c) for c in configs}
    assert len(configs) == 12 and len(variants) == 12
    assert "finetuned-ls_plateau" in variants


def test_a_variant_key_the_config_leaves_out_is_named_by_its_default():
    single = registry()["single"]  # sets no model: the trial trains the default one
    assert single.variant({}) == TrialConfig.model == "googlenet"
    assert single.variant({"model": "resnet18"}) == "resnet18"


def test_a_study_name_is_answered_with_the_nearest_one():
    from search_spaces import get_space

    with pytest.raises(UserError, match=r"unknown space 'googlenet_strategie' \(did you mean "):
        get_space("googlenet_strategie")


def test_two_study_modules_with_one_name_are_refused(tmp_path, monkeypatch):
    """Studies, models, adapters and factories share one Registry: a second study of the
    same name is refused when the studies are loaded (it used to replace the first)."""
    import search_spaces

    clash = tmp_path / "zz_clash.py"
    clash.write_text(
        "from search_spaces import Space\n"
        "SPACE = Space(name='single', description='a copy', param_space={}, variant_keys=())\n"
    )
    monkeypatch.setattr(search_spaces, "__path__", [*search_spaces.__path__, str(tmp_path)])
    monkeypatch.setattr(search_spaces, "SPACES", search_spaces.Registry("space", checked=False))
    with pytest.raises(ValueError, match="search_spaces/single.py and in search_spaces/zz_clash"):
        search_spaces.registry()


def test_a_name_registered_twice_is_refused():
    from trainables.core.registry import Registry

    things: Registry[int] = Registry("thing", checked=False)
    things.add("one", 1)
    with pytest.raises(ValueError, match="thing 'one' registered twice"):
        things.add("one", 2)

    @things.register_instance("adapter")
    class Adapter:
        pass

    assert isinstance(things["adapter"], Adapter)
    with pytest.raises(UserError, match=r"thing='adaptr' \(did you mean 'adapter'\?\)"):
        things["adaptr"]
