"""Twelve ways to fine-tune GoogLeNet: 4 strategies x 3 objectives, as in the notebooks."""
from ray import tune

from search_spaces import Space

SPACE = Space(
    name="googlenet_strategies",
    description="GoogLeNet, 4 fine-tuning strategies x 3 objectives (12 variants), "
                "Adam lr 1e-4, batch 32, up to 50 epochs, ASHA on val loss",
    param_space={
        "model": "googlenet",
        "strategy": tune.grid_search(["base", "finetuned", "feature_extractor",
                                      "gradual_unfreeze"]),
        # ce = cross-entropy + StepLR; ls = label smoothing 0.1 + StepLR;
        # ls_plateau = label smoothing 0.1 + ReduceLROnPlateau (see trainables/config.py)
        "objective": tune.grid_search(["ce", "ls", "ls_plateau"]),
        "optimizer": "adam",
        "lr": 1e-4,
        "batch_size": 32,
        "max_epochs": 50,
    },
    variant_keys=("strategy", "objective"),
)
