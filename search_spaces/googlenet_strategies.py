"""Twelve ways to fine-tune GoogLeNet: 4 strategies x 3 objectives, as in the notebooks."""

from ray import tune

from search_spaces import Space

SPACE = Space(
    name="googlenet_strategies",
    description="GoogLeNet, 4 fine-tuning strategies x 3 objectives (12 variants), "
    "Adam lr 1e-4, batch 32, up to 50 epochs, ASHA on val loss (grace 14 epochs)",
    param_space={
        "model": "googlenet",
        "strategy": tune.grid_search(
            ["base", "finetuned", "feature_extractor", "gradual_unfreeze"]
        ),
        # ce = cross-entropy + StepLR; ls = label smoothing 0.1 + StepLR;
        # ls_plateau = label smoothing 0.1 + ReduceLROnPlateau (see trainables/core/config.py)
        "objective": tune.grid_search(["ce", "ls", "ls_plateau"]),
        "optimizer": "adam",
        "lr": 1e-4,
        "batch_size": 32,
        "max_epochs": 50,
    },
    variant_keys=("strategy", "objective"),
    # Measured (benchmarks/README.md, "What ASHA saves"): on the demo study run to its end,
    # a replay of ASHA with grace 7 left 6 of 12 variants reported more than 2 points below
    # what full training gave them; grace 14 left 2, for 0.55 of the epochs (0.47 at 7).
    grace_period=14,
)
