"""The trial: its config, the factories behind each config key, the one training loop, and
the Ray wrapper around it. The factory modules are imported here so that their registries
hold every name whenever a config is checked (trainables/registry.py)."""
from trainables import augment, losses, optim, strategies  # noqa: F401  (they register)
