"""The trial side, in rooms by concern, each importing only rooms below it:

core/     config and its checks, registries, metric names, UserError, file helpers
stats/    metrics with intervals, McNemar, calibration, prediction sets
model/    the zoo, builds and heads, pretrained weights, costs, the trial record
recipe/   losses, optimizers and schedules, strategies, augmentation recipes
data/     find, split and decode images; transforms and batches for the loop
trial/    build a trial, the one training loop, checkpoints, the Ray trainable
deploy/   the export bundle and the REST service's app (no trial uses them)
"""
