"""A grid over learning rate and optimizer for one model (``--set model=NAME``): the plain
way to find a learning rate, and the space the ASHA benchmark measures."""

from ray import tune

from search_spaces import Space

SPACE = Space(
    name="lr_grid",
    description="grid: lr {1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2} x optimizer {adam, sgd} "
    "for --set model=NAME (default small_cnn, from scratch), 20 epochs",
    param_space={
        "model": "small_cnn",
        "pretrained": "false",
        "lr": tune.grid_search([1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]),
        "optimizer": tune.grid_search(["adam", "sgd"]),
        "max_epochs": 20,
        "lr_schedule": "none",
        "early_stop_patience": 0,
    },
    variant_keys=("model", "optimizer", "lr"),
    grace_period=2,
)
