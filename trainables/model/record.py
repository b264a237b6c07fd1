"""The trial record: what a trial was, resolved once by ``trainables/trial/build.py`` and saved in
every checkpoint (``trial.json``). Export, predict and report read it instead of recomputing
it from today's defaults, so a value cannot drift between training and deployment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from trainables.core.config import TrialConfig, with_current_keys
from trainables.core.errors import UserError
from trainables.model.factory import ModelBuild, data_config


@dataclass(frozen=True)
class Preprocess:
    image_size: int  # what the model sees
    load_size: int  # what is decoded and cached
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_json(cls, raw: dict) -> Preprocess:
        return cls(
            int(raw["image_size"]),
            int(raw["load_size"]),
            str(raw["interpolation"]),
            tuple(float(v) for v in raw["mean"]),
            tuple(float(v) for v in raw["std"]),
        )


def preprocess_for(cfg: TrialConfig) -> Preprocess:
    """The preprocessing a trial of ``cfg`` uses: its model's own, with ``image_size``
    overriding the size. The driver decodes at its ``load_size`` (here, not beside the
    transforms, so that the driver imports no torchvision)."""
    model = data_config(cfg.model)
    size = cfg.image_size or model.input_size
    load = max(size, int(round(size / model.crop_pct)))
    return Preprocess(size, load, model.interpolation, model.mean, model.std)


RECORD_FORMAT = 1


def variant_name(config: Mapping[str, Any], keys: tuple[str, ...] | list[str]) -> str:
    """A trial's variant id: the values of the study's variant keys, joined with '-'. A key
    the trial's config leaves out has its default value (``single`` sets no model)."""
    from trainables.core.config import TrialConfig

    return "-".join(
        str(config[key] if key in config else getattr(TrialConfig, key, None)) for key in keys
    )


@dataclass(frozen=True)
class TrialRecord:
    variant: str
    config: dict  # every TrialConfig field
    model: ModelBuild
    preprocess: Preprocess
    class_names: tuple[str, ...]
    data: dict  # the data root and the content digest of its files
    format: int = RECORD_FORMAT

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict, where: str = "trial record") -> TrialRecord:
        try:
            if raw.get("format") != RECORD_FORMAT:
                raise ValueError(f"format {raw.get('format')}, this version reads {RECORD_FORMAT}")
            return cls(
                variant=str(raw["variant"]),
                config=with_current_keys(raw["config"]),  # one recorded before a rename too
                model=ModelBuild(**raw["model"]),
                preprocess=Preprocess.from_json(raw["preprocess"]),
                class_names=tuple(str(c) for c in raw["class_names"]),
                data=dict(raw.get("data", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(
                f"{where}: not a trial record this version reads ({exc}); re-run "
                "the trial with this version"
            ) from None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
