"""Modern architectures from timm beside torchvision's VGG16 and ResNet50.

Each model gets its own input size, interpolation and normalisation from its pretrained
config, and its own learning-rate range (drawn log-uniformly per trial): one range up to
1e-1 for all of them leaves VGG16, ConvNeXt and Swin at chance, which the table then marks
as stuck_at_chance rather than reporting it as a result.
"""

from ray import tune

from search_spaces import Space, per_model

LEARNING_RATE_RANGES = {
    "tf_efficientnetv2_s": (5e-5, 5e-4),
    "convnext_tiny": (2e-5, 2e-4),
    "vit_base_patch16_224": (1e-5, 1e-4),
    "swinv2_tiny_window8_256": (1e-5, 1e-4),
    "vgg16": (5e-6, 5e-5),
    "resnet50": (5e-5, 5e-4),
}

SPACE = Space(
    name="timm_zoo",
    description="tf_efficientnetv2_s, convnext_tiny, vit_base_patch16_224, "
    "swinv2_tiny_window8_256, vgg16, resnet50; each at its own input size, "
    "AdamW with a per-model lr range",
    param_space={
        "model": tune.grid_search(list(LEARNING_RATE_RANGES)),
        "lr": per_model(LEARNING_RATE_RANGES),
        "image_size": 0,  # each model's own
        "strategy": "base",
        "objective": "ls",
        "optimizer": "adamw",
        "weight_decay": 0.05,
        "batch_size": 32,
        "max_epochs": 30,
    },
    variant_keys=("model",),
    grace_period=4,
)
