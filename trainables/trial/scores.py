"""A split's scores from its logits, the same for a network run on images and a head run on
cached features."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def split_scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, np.ndarray]:
    """Mean cross-entropy, accuracy and the softmax probabilities."""
    loss = F.cross_entropy(logits, labels).item()
    probs = logits.softmax(1).numpy()
    acc = float((probs.argmax(1) == labels.numpy()).mean())
    return loss, acc, probs
