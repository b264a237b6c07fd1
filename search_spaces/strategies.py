"""Every fine-tuning strategy for one model (``--set model=NAME``): ``base`` (everything
trains), ``feature_extractor`` (frozen backbone, new head), ``gradual_unfreeze`` (head first,
then everything at a lower learning rate), and ``finetuned`` (auxiliary heads in the loss)
where the model has auxiliary heads. Each strategy gets the learning rate usual for it with
a pretrained backbone: a new head alone takes a larger step than the whole network."""

from search_spaces import Space, is_domain, is_grid, per_key
from trainables.core.errors import UserError

STRATEGY_LR = {
    "base": 1e-4,
    "finetuned": 1e-4,
    "feature_extractor": 1e-3,
    "gradual_unfreeze": 1e-3,
}  # gradual_unfreeze: the head's, until it unfreezes


def strategies_for_model(param_space: dict) -> dict:
    """The strategy grid of the model this sweep trains."""
    from ray import tune

    from trainables.model.zoo import model_spec

    model = param_space.get("model")
    if is_grid(model) or is_domain(model):
        raise UserError(
            "the strategies study compares the strategies of one model: pass "
            "--set model=NAME (not a grid of models)"
        )
    if param_space.get("strategy") is not None:  # the user picked strategies: theirs
        return param_space
    names = ["base", "feature_extractor", "gradual_unfreeze"]
    if model_spec(model).aux_heads:
        names.insert(1, "finetuned")
    return {**param_space, "strategy": tune.grid_search(names)}


SPACE = Space(
    name="strategies",
    description="every fine-tuning strategy of --set model=NAME (default mobilenet_v2): base, "
    "feature_extractor, gradual_unfreeze (+ finetuned with aux heads); per-strategy "
    "lr, Adam, batch 32, up to 15 epochs",
    param_space={
        "model": "mobilenet_v2",
        "lr": per_key("strategy", STRATEGY_LR),
        "unfreeze_epoch": 3,
        "unfreeze_lr": 1e-4,
        "objective": "ce",
        "optimizer": "adam",
        "batch_size": 32,
        "max_epochs": 15,
        "early_stop_patience": 4,
    },
    variant_keys=("strategy",),
    expand=strategies_for_model,
)
