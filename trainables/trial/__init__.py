"""One trial: built from its config, trained by the shared loop, checkpointed, and wrapped
as the Ray Tune trainable."""
