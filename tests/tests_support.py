"""Small in-memory trial data for loop and strategy tests (the real loader is tested
in test_data.py and through the command line)."""
import numpy as np
import torch

from trainables.loop import EvalSplit, TrialData
from trainables.transforms import Preprocess


def tiny_trial_data(num_classes: int = 3, image_size: int = 32, n: int = 12,
                    seed: int = 0) -> TrialData:
    """uint8 images whose class brightens one colour channel: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)

    def make(count):
        y = torch.arange(count) % num_classes
        x = torch.randint(60, 120, (count, image_size, image_size, 3), generator=g)
        x[torch.arange(count), :, :, y % 3] += 120
        return x.to(torch.uint8), y

    sizes = [n, max(num_classes, n // 2), max(num_classes, n // 2)]
    parts = [make(count) for count in sizes]
    images = torch.cat([x for x, _ in parts]).numpy()
    rows = np.split(np.arange(sum(sizes)), np.cumsum(sizes)[:-1])

    def split(i):
        return EvalSplit(torch.from_numpy(images[rows[i]]).permute(0, 3, 1, 2).contiguous(),
                         parts[i][1], rows[i])

    return TrialData(
        images=images, images_key=("tiny", seed), train_rows=rows[0],
        train_labels=parts[0][1].numpy(), val=split(1), test=split(2),
        num_classes=num_classes,
        preprocess=Preprocess(image_size, image_size, "bilinear", (0.5,) * 3, (0.25,) * 3),
    )
