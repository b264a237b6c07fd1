"""The trial: its config, the factories behind each config key, the one training loop, and
the Ray wrapper around it."""
