"""Find the recipe: Optuna's TPE with ASHA over what matters when fine-tuning a pretrained
network on a small data set (Li et al. 2020, Quick-Tune, timm's train.py), for one model
(``--set model=NAME``) on one data set; ``--num-samples`` is the budget.

Searched: the strategy (the linear probe on the frozen features, a trained head on them,
gradual unfreezing, linear probing then fine-tuning, full fine-tuning), image size,
augmentation (the 8 dihedral views or none: both finite, so every frozen trial's backbone
runs once per image and view, cached), whether it is scored on the mean over the 8 views
(``tta``), learning rate, optimizer and momentum, weight decay,
class weighting and label smoothing, a frozen share of the backbone, layer-wise lr decay,
warm-up, a moving average of the weights, gradient clipping and, for a model that names its
trunk, what the head reads (``taps``: the last map, every stage's, or every stage's at two
sizes); with ``--set class_order=A,B,...`` (ordered classes) also the ordinal objectives.
The search's first two trials are the linear probe (``points``: on every stage at 128 px,
then at 224 px on every stage's expanded map for a model that has them, else at 224 and
112 px joined), so it never hands back less than the field's simplest strong baseline.
It ends with ``best_config.json``; cross-validate the best with
``python sweeps/confirm.py runs/NAME --top 3 --folds 5``.
"""

from ray import tune

from search_spaces import Space, is_domain, is_grid

PROBE = {
    "strategy": "linear_probe",
    "augment": "dihedral",
    "image_size": 128,
    "lr": 1e-3,  # not used by the probe; Optuna is told a value of every searched key
    "optimizer": "adam",
    "momentum": 0.9,
    "weight_decay": 1e-2,  # the 3,952 standardised features of every stage want more
    "objective": "ce",
    "label_smoothing": 0.0,
    "frozen_fraction": 0.0,
    "layer_decay": 0.0,
    "warmup_epochs": 0,
    "ema_decay": 0.0,
    "clip_grad": 0.0,
    # every stage's pooled maps (where the model names its trunk), scored on the mean over
    # the 8 views: on ELPV at 224 px the probe's out-of-fold accuracy went from 0.771 (the
    # last map, weight decay 1e-3) to 0.787 (weight decay 1e-2), and at 128 px it was
    # 0.787 too (docs/case-studies.md); on one view, the last map gave 0.751
    "taps": "stages",
    "tta": "dihedral",
}

# the same probe at 224 px reading every stage of the image and of the image at half size
# (taps=pyramid), a second size for the search to start from: on ELPV, one view,
# scikit-learn's probe on these features scored 0.779 against 0.770 at 224 px alone; with
# the 8 views and tta=dihedral the tool's pyramid probe scored 0.789 out of fold, level
# with the every-stage probe at 224 px (0.787) and at 128 px (docs/case-studies.md)
PYRAMID = {**PROBE, "image_size": 224, "taps": "pyramid"}

# for a model whose stages end in inverted residual blocks (mobilenet_v2), the second
# probe reads every stage at its expanded map instead (taps=expanded): on ELPV at 224 px
# with the 8 views, 0.7999 out of fold against the pyramid probe's 0.789, on one size's
# cache. Its 8,992 features want more weight decay for a validation loss the search can
# rank: 0.660 at 3e-2 against 0.746 at 1e-2, at the same accuracy (0.7999); at 0.1 the loss
# fell to 0.617 and the accuracy to 0.793 (docs/case-studies.md)
EXPANDED = {**PROBE, "image_size": 224, "taps": "expanded", "weight_decay": 3e-2}


def points(param_space: dict) -> tuple[dict, ...]:
    """The search's first two trials: the every-stage probe at 128 px, then the expanded
    probe at 224 px where the search may read the expanded maps, else the pyramid probe."""
    taps = param_space.get("taps")
    expanded = is_domain(taps) and "expanded" in taps.categories
    return (PROBE, EXPANDED if expanded else PYRAMID)


OBJECTIVES = ["ce", "weighted_ce"]
ORDERED = ["ordinal", "weighted_ordinal"]  # only for ordered classes: class_order given


def with_taps(param_space: dict) -> dict:
    """What the head reads (the last map, or every stage's: ``taps``; at their expanded
    maps too where the stages end in inverted residual blocks) joins the search for a
    model that names its trunk, unless the command line fixed it."""
    from trainables.model.zoo import MODELS

    model = param_space.get("model")
    if "taps" in param_space or not isinstance(model, str):
        return param_space
    if model not in MODELS or not MODELS[model].trunk:
        return param_space
    taps = ["last", "stages", "pyramid"]
    if MODELS[model].expands:  # its stages end in inverted residual blocks
        taps += ["expanded", "expanded_pyramid"]
    return {**param_space, "taps": tune.choice(taps)}


def expand(param_space: dict) -> dict:
    return with_taps(with_ordinal(param_space))


def with_ordinal(param_space: dict) -> dict:
    """The ordinal objectives join the search when the classes are ordered (class_order)."""
    order = param_space.get("class_order")
    objective = param_space.get("objective")
    if not order or is_grid(order) or is_domain(order) or not is_domain(objective):
        return param_space
    return {**param_space, "objective": tune.choice(OBJECTIVES + ORDERED)}


SPACE = Space(
    name="recipe",
    description="Optuna TPE over strategy (linear_probe first; lp_ft), image size "
    "{64,96,128,224}, augment {dihedral,none}, tta {off,dihedral}, lr, optimizer and "
    "momentum, weight decay, class weighting (ordinal objectives with --set "
    "class_order), label smoothing, frozen fraction, layer decay, warm-up, EMA, gradient "
    "clipping, taps for --set model=NAME (default mobilenet_v2); --num-samples = trial "
    "budget (default 20)",
    param_space={
        "model": "mobilenet_v2",
        "pretrained": "auto",
        "strategy": tune.choice(
            ["linear_probe", "feature_extractor", "gradual_unfreeze", "lp_ft", "base"]
        ),
        # 224 px has about 3 times the pixels of 128 px, so a fine-tuning trial's epochs cost
        # about 3 times as much there; a frozen trial's cached features make it cheap
        "image_size": tune.choice([64, 96, 128, 224]),
        "augment": tune.choice(["dihedral", "none"]),
        "tta": tune.choice(["off", "dihedral"]),
        "lr": tune.loguniform(1e-5, 3e-3),
        "optimizer": tune.choice(["adam", "adamw", "sgd"]),
        "momentum": tune.uniform(0.8, 0.99),
        "weight_decay": tune.loguniform(1e-6, 1e-1),
        "objective": tune.choice(OBJECTIVES),
        "label_smoothing": tune.uniform(0.0, 0.2),
        "frozen_fraction": tune.choice([0.0, 0.5]),
        "layer_decay": tune.choice([0.0, 0.7]),
        "warmup_epochs": tune.choice([0, 1]),
        "ema_decay": tune.choice([0.0, 0.99]),
        # on ELPV, fine-tuning MobileNetV2 after its probe with frozen BatchNorm statistics
        # blew up (a training loss of 1.8 to 14) at SGD learning rates of 3e-4 and 1e-3
        # unless the gradient was clipped
        "clip_grad": tune.choice([0.0, 1.0]),
        "unfreeze_epoch": 2,
        "unfreeze_lr": 1e-4,
        "batch_size": 32,
        "max_epochs": 12,
        "early_stop_patience": 3,
        "chance_epochs": 0,
    },
    variant_keys=("strategy",),
    grace_period=4,
    search="tpe",
    budget=20,
    points=points,
    expand=expand,
)
