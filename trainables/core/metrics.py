"""Metric and stop-reason names, shared by the loop, the scheduler, the table and the tests."""

EPOCH = "epoch"
TRAIN_LOSS = "train_loss"
TRAIN_ACC = "train_acc"
VAL_LOSS = "val_loss"  # plain cross-entropy on the validation split, whatever the training loss
VAL_ACC = "val_acc"
LR = "lr"
EPOCH_TIME = "epoch_time_s"

# Running bests, reported every epoch so a trial stopped early still has them.
BEST_EPOCH = "best_epoch"
BEST_VAL_LOSS = "best_val_loss"
BEST_VAL_ACC = "best_val_acc"
TEST_ACC = "test_acc"  # test split, scored with the best-val-loss weights
TEST_MACRO_F1 = "test_macro_f1"
# 95% interval bounds of the two test metrics: accuracy Wilson, macro-F1 BCa bootstrap
# (trainables/stats/evaluation.py)
TEST_ACC_LOW, TEST_ACC_HIGH = "test_acc_low", "test_acc_high"
TEST_MACRO_F1_LOW, TEST_MACRO_F1_HIGH = "test_macro_f1_low", "test_macro_f1_high"
TEST_INTERVALS = (TEST_ACC_LOW, TEST_ACC_HIGH, TEST_MACRO_F1_LOW, TEST_MACRO_F1_HIGH)
# with tta=flip or dihedral: the same weights scored on the mean of each test image's views
TEST_ACC_TTA, TEST_MACRO_F1_TTA = "test_acc_tta", "test_macro_f1_tta"
# ordered classes (class_order, the ordinal losses): mean absolute error of the predicted
# grade on test, in grades (0: every grade right; 1: one grade off on average)
TEST_GRADE_ERROR = "test_grade_error"
# temperature scaling fit on validation (trainables/stats/calibration.py), and the expected
# calibration error on test before and after it
TEMPERATURE, TEST_ECE, TEST_ECE_CALIBRATED = "temperature", "test_ece", "test_ece_calibrated"
CALIBRATION = (TEMPERATURE, TEST_ECE, TEST_ECE_CALIBRATED)
PRETRAINED = "pretrained"  # 1 when pretrained weights were really loaded
WEIGHTS = "weights"  # which: a torchvision weights name or a timm tag ("" for none)
NODE = "node"  # the Ray node that ran the trial (first 8 hex digits of its id)
# what the model costs to deploy (trainables/model/costs.py): parameters, FLOPs per image at its
# input size, megabytes of weights; latency is measured by the report, on one machine
PARAMS, FLOPS, WEIGHTS_MB = "params", "flops", "weights_mb"
COSTS = (PARAMS, FLOPS, WEIGHTS_MB)
LATENCY_B1, LATENCY_B32 = "latency_b1_ms", "latency_b32_ms"
STOP_REASON = "stop_reason"  # empty while the trial runs
IMAGES_ON = "images_on"  # device: the decoded images on the training device; host: batches
# gathered in host memory and copied over (they exceed the device budget); features: the
# epoch's head trained on the frozen backbone's cached outputs (trainables/trial/frozen.py)
ERROR_MESSAGE = "error"  # why a trial stopped on its own with oom

# What ASHA and early stopping watch.
METRIC = VAL_LOSS
MODE = "min"

# Stop reasons as they appear in the result table.
COMPLETED = "completed"
EARLY_STOPPING = "early_stopping"
DIVERGED = "diverged"
STUCK_AT_CHANCE = "stuck_at_chance"
OOM = "oom"
ASHA = "asha"
STOPPED = "stopped"  # ended by the scheduler without a reason of its own (not ASHA)
UNFINISHED = "unfinished"  # the sweep stopped (a signal, a storage fault) before it ended
ERROR = "error"
# silent past --stall-timeout: its worker was stopped (sweeps/driver/watchdog.py)
STALLED = "stalled"
FAILED = (DIVERGED, OOM, ERROR, STALLED)  # stop reasons that count as failed trials
NOT_A_RESULT = (*FAILED, STUCK_AT_CHANCE, UNFINISHED)  # left out of per-variant rankings

SCALARS = (
    TRAIN_LOSS,
    TRAIN_ACC,
    VAL_LOSS,
    VAL_ACC,
    LR,
    EPOCH_TIME,
    BEST_VAL_LOSS,
    BEST_VAL_ACC,
    TEST_ACC,
    TEST_MACRO_F1,
)
