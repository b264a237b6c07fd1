"""Six CNNs under one protocol: same input size, head replacement, loss, optimizer, schedule
and early stopping; only the learning rate is each model's own, and the table shows it."""

from ray import tune

from search_spaces import Space, per_model

# One Adam learning rate for all would cripple some: VGG16 (no BatchNorm) diverges or sits
# at chance where the others train; the from-scratch small CNN needs a larger step.
LEARNING_RATES = {
    "resnet50": 1e-4,
    "resnet18": 1e-4,
    "vgg16": 1e-5,
    "mobilenet_v2": 1e-4,
    "googlenet": 1e-4,
    "small_cnn": 1e-3,
}

SPACE = Space(
    name="cnn_comparison",
    description="resnet50, resnet18, vgg16, mobilenet_v2, googlenet, small_cnn under one "
    "protocol (base strategy, cross-entropy + StepLR, Adam, batch 32); "
    "per-model lr",
    param_space={
        "model": tune.grid_search(list(LEARNING_RATES)),
        "lr": per_model(LEARNING_RATES),
        "strategy": "base",
        "objective": "ce",
        "optimizer": "adam",
        "batch_size": 32,
        "max_epochs": 50,
    },
    variant_keys=("model",),
    grace_period=5,
)
