"""The model zoo: every registered model, what it is, and how much of a GPU one of its
trials takes. Below the adapters (families.py), the model factory (factory.py) and the
weights store (weights.py), which all look models up here."""

from __future__ import annotations

from dataclasses import dataclass

from trainables.core.errors import UserError
from trainables.core.registry import Registry

TIMM_PREFIX = "timm/"


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: where it comes from, its classifier layers, and how much of a GPU
    one of its trials takes by default."""

    name: str
    family: str  # "torchvision" | "timm" | "custom"
    heads: tuple[str, ...] = ()  # torchvision: classifier module paths, main head first
    aux_heads: bool = False  # has auxiliary classifiers that a strategy may train
    # default share of a GPU per trial: models whose step is short train more images per
    # second two to a GPU (benchmarks/README.md, packing); larger ones get a whole GPU
    gpu_share: float = 1.0
    # the path of its trunk: the nn.Sequential of blocks whose output it pools and
    # classifies, which ``taps=stages`` reads at every stage's end ("": not supported)
    trunk: str = ""
    # its trunk's stages end in inverted residual blocks, which ``taps=expanded`` reads
    # at their expanded maps
    expands: bool = False
    # the adapter that builds it (trainables/model/families.py), where its family's own
    # does not do: GoogLeNet's auxiliary heads
    adapter: str = ""

    @property
    def timm_name(self) -> str:
        return self.name[len(TIMM_PREFIX) :] if self.name.startswith(TIMM_PREFIX) else self.name


# any timm name is a model too, so the key is not limited to these names
MODELS: Registry[ModelSpec] = Registry("model", checked=False)


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a model to the zoo under its name (a name given twice is refused); its adapter
    in families.py (``spec.adapter``, or else its family's) builds it."""
    return MODELS.add(spec.name, spec)


register_model(ModelSpec("resnet18", "torchvision", ("fc",), gpu_share=0.5))
register_model(ModelSpec("resnet50", "torchvision", ("fc",)))
register_model(ModelSpec("vgg16", "torchvision", ("classifier.6",)))
register_model(
    ModelSpec(
        "mobilenet_v2",
        "torchvision",
        ("classifier.1",),
        gpu_share=0.5,
        trunk="features",
        expands=True,
    )
)
register_model(
    ModelSpec(
        "googlenet",
        "torchvision",
        ("fc", "aux1.fc2", "aux2.fc2"),
        aux_heads=True,
        gpu_share=0.5,
        adapter="googlenet",
    )
)
# built by the custom adapter from nets.NETS under the same name
register_model(ModelSpec("small_cnn", "custom", ("head",), gpu_share=0.5, trunk="features"))
register_model(ModelSpec("tf_efficientnetv2_s", "timm"))
register_model(ModelSpec("convnext_tiny", "timm"))
register_model(ModelSpec("vit_base_patch16_224", "timm"))
register_model(ModelSpec("swinv2_tiny_window8_256", "timm"))


def model_spec(name: str) -> ModelSpec:
    """The registered model, or any other timm model (``timm/NAME`` or a bare timm name)."""
    if name in MODELS:
        return MODELS[name]
    import timm

    spec = ModelSpec(name, "timm")
    if timm.is_model(spec.timm_name):
        return spec
    raise UserError(
        f"unknown model '{name}': use one of {', '.join(MODELS.names())} "
        "or a timm model name (see timm.list_models())"
    )
