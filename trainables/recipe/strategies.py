"""Fine-tuning strategies: training-time behaviour behind one small interface, not new loops.

The loop calls ``strategy.train_mode(net)`` before each training epoch and
``strategy.on_epoch_start(net, optimizer, epoch)`` with the 0-based epoch index. A strategy
also owns the rules that follow from it: whether it needs auxiliary heads, from which epoch
early stopping counts, and the earliest epoch at which a scheduler may compare it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn, optim

from trainables.core.errors import UserError
from trainables.core.registry import Registry
from trainables.model.nets import Standardize
from trainables.recipe.augment import augment_spec
from trainables.recipe.optim import create_optimizer, layer_blocks, layer_decay_groups

if TYPE_CHECKING:
    from trainables.core.config import TrialConfig
    from trainables.model.factory import Net

STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


def set_backbone_frozen(net: Net, frozen: bool, fraction: float = 0.0) -> None:
    """Freeze or unfreeze every parameter outside the classifier heads; unfrozen, the first
    ``fraction`` of the backbone's blocks (``optim.layer_blocks``) stay frozen."""
    prefix = frozen_prefix(net, fraction)
    for name, param in net.named_parameters():
        if not net.is_head(name):
            param.requires_grad = not (frozen or name in prefix)


def frozen_prefix(net: Net, fraction: float) -> set[str]:
    """The parameter names of the first ``fraction`` of the backbone's blocks."""
    if not fraction:
        return set()
    blocks = layer_blocks(net)[:-1]  # the last block is the head
    return {n for block in blocks[: round(fraction * len(blocks))] for n in block}


def backbone_frozen(net: Net) -> bool:
    return not any(p.requires_grad for n, p in net.named_parameters() if not net.is_head(n))


def check_probe(cfg: TrialConfig) -> None:
    """A probe fits on cached features: refuse, in one line, what they cannot serve."""
    what = f"strategy={cfg.strategy} fits its head on cached features"
    if augment_spec(cfg.augment).cached_views(cfg.random_erasing) is None:
        raise UserError(
            f"{what}, which augment={cfg.augment}"
            + (f" with random_erasing={cfg.random_erasing:g}" if cfg.random_erasing else "")
            + " cannot give: use augment=none or augment=dihedral"
        )
    if cfg.frozen_cache == "off":
        raise UserError(f"{what}: drop frozen_cache=off")
    if cfg.head_dropout:
        raise UserError(f"{what} deterministically: use head_dropout=0")


@STRATEGIES.register("base")
class Strategy:
    """``base``: every layer trains, no auxiliary heads."""

    aux_heads = False  # whether the model must be built with its auxiliary classifiers
    # L-BFGS iterations of each probe epoch (see ``probe_epochs``)
    probe_iterations = 0

    def __init__(self, cfg: TrialConfig):
        self.cfg = cfg

    @property
    def frozen_epochs(self) -> int:
        """How many leading epochs keep the whole backbone frozen (and in eval mode): the
        epochs whose head may train on the backbone's cached outputs (trial/frozen.py)."""
        return 0

    @property
    def probe_epochs(self) -> int:
        """How many leading epochs are each one full-batch L-BFGS fit of the head on the
        frozen backbone's cached outputs (a linear probe) instead of a pass of minibatches."""
        return 0

    def create_optimizer(self, net: Net) -> optim.Optimizer:
        if self.cfg.layer_decay:
            return create_optimizer(self.cfg, layer_decay_groups(self.cfg, net))
        return create_optimizer(self.cfg, net.parameters())

    @property
    def aux_weight(self) -> float:
        return self.cfg.aux_weight if self.aux_heads else 0.0

    @property
    def patience_start(self) -> int:
        """First epoch (0-based) whose lack of progress counts towards early stopping."""
        return 0

    @property
    def earliest_comparison(self) -> int:
        """The first epoch (1-based) at which comparing this trial with others says anything
        about the strategy: ASHA's grace period is never shorter for it."""
        return 1

    def on_epoch_start(self, net: Net, optimizer: optim.Optimizer, epoch: int) -> None:
        """Called before each epoch (0-based); idempotent, so a resumed trial gets it right."""
        if self.cfg.frozen_fraction:
            set_backbone_frozen(net, False, self.cfg.frozen_fraction)

    def train_mode(self, net: Net) -> None:
        """Put ``net`` in training mode; a frozen backbone, or the frozen blocks of one
        (``frozen_fraction``), stays in eval mode so its BatchNorm statistics do not drift."""
        frozen = backbone_frozen(net)
        prefix = frozen_prefix(net, self.cfg.frozen_fraction)
        in_prefix: dict[str, bool] = {}
        for name, module in net.named_modules():
            if prefix:  # a module whose parameters are all in it; a parameterless one
                # (an activation, a dropout) follows the module it sits in
                own = [n for n, _ in module.named_parameters(prefix=name)]
                parent = name.rpartition(".")[0]
                in_prefix[name] = (
                    all(n in prefix for n in own) if own else in_prefix.get(parent, False)
                )
            still = frozen or in_prefix.get(name, False)
            module.training = not still or net.is_head(name)
            if self.cfg.batchnorm == "eval" and isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.training = False


@STRATEGIES.register("finetuned")
class Finetuned(Strategy):
    """Like ``base``, with GoogLeNet's auxiliary heads on and their loss counted
    (``aux_weight``, 0.3 as in the paper; 0 keeps the heads but leaves them out of the loss)."""

    aux_heads = True


@STRATEGIES.register("feature_extractor")
class FeatureExtractor(Strategy):
    """Backbone frozen (and in eval mode) for the whole run; only the head trains."""

    @property
    def frozen_epochs(self) -> int:
        return self.cfg.max_epochs

    def on_epoch_start(self, net, optimizer, epoch):
        set_backbone_frozen(net, True)


# L-BFGS iterations of one linear_probe epoch (torch.optim.LBFGS's max_iter)
PROBE_ITERATIONS = 50


@STRATEGIES.register("linear_probe")
class LinearProbe(FeatureExtractor):
    """The field's simplest strong baseline: the head alone, fitted by full-batch L-BFGS
    (strong Wolfe line search, ``PROBE_ITERATIONS`` iterations an epoch) on the frozen
    backbone's cached outputs of every training image in every view of ``augment`` (none,
    or the 8 dihedral views), with ``weight_decay`` as an L2 penalty on the head's weights
    and the trial's loss (class weights, label smoothing). It ends when an epoch no longer
    moves the training loss, or by early stopping; ``lr`` and ``optimizer`` are not used.
    The row, record, export and predict are those of any trial: the network is the same,
    only its head was trained."""

    probe_iterations = PROBE_ITERATIONS

    def __init__(self, cfg: TrialConfig):
        super().__init__(cfg)
        check_probe(cfg)

    @property
    def probe_epochs(self) -> int:
        return self.cfg.max_epochs


@STRATEGIES.register("lp_ft")
class LinearProbeThenFineTune(Strategy):
    """Linear probing, then fine-tuning (Kumar et al. 2022): epoch 1 fits the head to
    convergence on the frozen backbone's cached outputs (full-batch L-BFGS, as
    ``linear_probe``, 4 x ``PROBE_ITERATIONS`` iterations), so the pretrained features are
    not distorted by the gradients of a random head; from epoch 2 every layer trains with
    the trial's optimizer and ``lr``. The network's own dropout (MobileNetV2's and
    EfficientNet's before their classifier) stays off in every epoch: the probe was fitted
    without it, and with it the fine-tuning would start from another function than the one
    the probe fitted (on ELPV at 128 px, the first fine-tuning epoch's training loss at a
    learning rate of 1e-12 was 0.94 against the probe's 0.53) and spend its first epochs
    shrinking the head's weights instead of adapting the features. For the same reason an
    every-stage head's standardisation (``taps=stages``) keeps the probe's statistics of all
    its training data: in training mode it would switch to each batch's own (on ELPV at 224
    px, the first fine-tuning epoch's training loss at a learning rate of 1e-12 was 0.33
    against the probe's 0.23)."""

    probe_iterations = 4 * PROBE_ITERATIONS

    def __init__(self, cfg: TrialConfig):
        super().__init__(cfg)
        check_probe(cfg)

    @property
    def frozen_epochs(self) -> int:
        return 1

    @property
    def probe_epochs(self) -> int:
        return 1

    @property
    def patience_start(self) -> int:
        return 1

    @property
    def earliest_comparison(self) -> int:
        return 3  # two epochs after the probe, as for gradual_unfreeze

    def on_epoch_start(self, net, optimizer, epoch):
        set_backbone_frozen(net, epoch < 1, self.cfg.frozen_fraction)

    def train_mode(self, net: Net) -> None:
        super().train_mode(net)
        fitted = not backbone_frozen(net)  # the probe has fitted the standardisation
        for module in net.modules():
            if isinstance(module, nn.modules.dropout._DropoutNd) or (
                fitted and isinstance(module, Standardize)
            ):
                module.training = False


@STRATEGIES.register("gradual_unfreeze")
class GradualUnfreeze(Strategy):
    """Head only for the first ``unfreeze_epoch`` epochs, then everything trains with the
    learning rate dropped to ``unfreeze_lr``."""

    @property
    def patience_start(self) -> int:
        # A frozen phase that stalls must not spend the patience of the unfrozen one.
        return self.cfg.unfreeze_epoch

    @property
    def frozen_epochs(self) -> int:
        return self.cfg.unfreeze_epoch

    @property
    def earliest_comparison(self) -> int:
        # two epochs after the unfreeze, so the backbone has trained before it is judged
        return self.cfg.unfreeze_epoch + 2

    def on_epoch_start(self, net, optimizer, epoch):
        frozen = epoch < self.cfg.unfreeze_epoch
        set_backbone_frozen(net, frozen, self.cfg.frozen_fraction)
        if epoch == self.cfg.unfreeze_epoch and epoch > 0:
            for group in optimizer.param_groups:
                group["lr"] = self.cfg.unfreeze_lr


def create_strategy(cfg: TrialConfig) -> Strategy:
    return STRATEGIES[cfg.strategy](cfg)
