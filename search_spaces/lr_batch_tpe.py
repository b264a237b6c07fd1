"""Optuna's TPE sampler over learning rate, batch size, optimizer, weight decay and label
smoothing for one model (``--set model=NAME``); ASHA prunes; ``--num-samples`` is the budget."""

from ray import tune

from search_spaces import Space

SPACE = Space(
    name="lr_batch_tpe",
    description="Optuna TPE over lr (1e-5..1e-1, log), batch {16,32,64}, optimizer, "
    "weight decay, label smoothing for --set model=NAME (default resnet18); "
    "--num-samples = trial budget (default 20)",
    param_space={
        "model": "resnet18",
        "strategy": "base",
        "lr": tune.loguniform(1e-5, 1e-1),
        "batch_size": tune.choice([16, 32, 64]),
        "optimizer": tune.choice(["adam", "adamw", "sgd"]),
        "weight_decay": tune.loguniform(1e-6, 1e-2),
        "label_smoothing": tune.uniform(0.0, 0.2),
        "max_epochs": 30,
    },
    variant_keys=("model",),
    grace_period=3,
    search="tpe",
    budget=20,
)
