"""Small in-memory trial data for loop and strategy tests (the real loader is tested
in test_data.py and through the command line)."""
import numpy as np
import torch

from trainables.loop import EvalSplit, TrialData


def tiny_trial_data(num_classes: int = 3, image_size: int = 32, n: int = 12,
                    seed: int = 0) -> TrialData:
    """Images whose class sets the mean of one colour channel: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)

    def make(count):
        y = torch.arange(count) % num_classes
        x = torch.randn(count, 3, image_size, image_size, generator=g) * 0.5
        x[torch.arange(count), y % 3] += 2.0
        return x, y

    xtr, ytr = make(n)
    xva, yva = make(max(num_classes, n // 2))
    xte, yte = make(max(num_classes, n // 2))
    return TrialData(
        train=torch.utils.data.TensorDataset(xtr, ytr),
        train_labels=ytr.numpy(),
        val=EvalSplit(xva, yva, np.arange(len(yva))),
        test=EvalSplit(xte, yte, np.arange(len(yte)) + 1000),
        num_classes=num_classes,
    )
