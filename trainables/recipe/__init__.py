"""The training recipe's factories, each a registered name of a config key: losses,
optimizers and lr schedules, fine-tuning strategies, augmentation recipes."""
