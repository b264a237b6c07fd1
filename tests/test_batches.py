"""The device data path: batched augmentation checked against what each family promises."""

import logging
import math

import numpy as np
import pytest
import torch

from tests_support import tiny_trial_data
from trainables.core.config import TrialConfig
from trainables.data.batches import BatchAugment, training_batches
from trainables.data.transforms import create_train_transform
from trainables.model.record import Preprocess
from trainables.recipe.augment import AUGMENTS, augment_spec

PRE = Preprocess(64, 64, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _augment(augment: str, random_erasing: float = 0.0):
    return BatchAugment(augment_spec(augment), PRE, random_erasing)


def _ramp_images(n: int, size: int = 64) -> torch.Tensor:
    """Channel 0 holds each pixel's x and channel 1 its y, as fractions of the side;
    channel 2 is all ones, so a sample that touched the zero padding shows below 1."""
    centres = (torch.arange(size) + 0.5) / size
    x = centres.view(1, size).expand(size, size)
    image = torch.stack([x, x.t(), torch.ones(size, size)])
    return image.expand(n, 3, size, size).clone()


def _sampled_maps(out: torch.Tensor):
    """Fit input = A @ output + b per image, from the ramps the output sampled (only where
    the sample lay wholly inside the image, so zero padding cannot bias it)."""
    n, _, s, _ = out.shape
    coords = (torch.arange(s) + 0.5) / s * 2 - 1
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    maps = []
    for image in out:
        inside = image[2] > 0.999
        design = torch.stack([xx[inside], yy[inside], torch.ones(int(inside.sum()))], 1)
        target = torch.stack([image[0][inside], image[1][inside]], 1) * 2 - 1
        solution = torch.linalg.lstsq(design.double(), target.double()).solution  # 3 x 2
        maps.append((solution[:2].t(), solution[2]))
    return maps


def test_random_resized_crop_and_flip_keep_their_promises():
    torch.manual_seed(0)
    aug = _augment(augment="autoaugment")  # geometry: crop and flip only
    maps = _sampled_maps(aug._geometry(_ramp_images(300)))
    flips = 0
    for linear, offset in maps:
        assert abs(linear[0, 1]) < 1e-3 and abs(linear[1, 0]) < 1e-3  # no rotation
        w, h = abs(linear[0, 0].item()), linear[1, 1].item()
        assert 0.7 - 1e-3 <= w * h <= 1 + 1e-3  # area fraction of the crop
        assert 3 / 4 - 1e-3 <= w / h <= 4 / 3 + 1e-3  # its aspect ratio
        assert abs(offset[0]) + w <= 1 + 1e-3 and abs(offset[1]) + h <= 1 + 1e-3  # inside
        flips += linear[0, 0].item() < 0
    assert 0.4 < flips / len(maps) < 0.6


def test_notebook_geometry_rotates_at_most_15_degrees():
    torch.manual_seed(1)
    maps = _sampled_maps(_augment(augment="notebook")._geometry(_ramp_images(200)))
    angles = []
    for linear, _ in maps:
        scale = torch.linalg.svdvals(linear)
        assert 0.7 - 1e-2 <= scale.prod() <= 1 + 1e-2
        # undo the flip, then read the angle off the rotation-and-scale matrix
        fixed = linear * torch.tensor([[-1.0], [1.0]]).double() if linear.det() < 0 else linear
        angles.append(
            math.degrees(math.atan2(fixed[0, 1] / fixed[0].norm(), fixed[0, 0] / fixed[0].norm()))
        )
    assert max(abs(a) for a in angles) <= 15.5
    assert max(abs(a) for a in angles) > 10  # the rotations are really there


def test_no_augmentation_matches_the_per_image_transform_exactly():
    spec = augment_spec("none")
    pre = Preprocess(48, 64, "bilinear", (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    images = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8)
    batched = BatchAugment(spec, pre)(images)
    single = create_train_transform(spec, pre)
    expected = torch.stack([single(image) for image in images])
    assert batched.shape == (5, 3, 48, 48)
    assert torch.allclose(batched, expected, atol=1e-6)


def test_colour_jitter_stays_within_its_factors():
    torch.manual_seed(2)
    grey = torch.full((400, 3, 8, 8), 128 / 255)
    # on a flat grey image contrast and saturation change nothing: only brightness shows
    centre = _augment("notebook")._colour(grey, augment_spec("notebook").jitter)
    assert torch.equal(centre, centre[:, :, :1, :1].expand_as(centre))
    assert centre.min() >= 128 / 255 * 0.8 - 1e-4 and centre.max() <= 128 / 255 * 1.2 + 1e-4
    brightness = centre.mean((1, 2, 3))
    assert brightness.std() > 0.02  # every image draws its own factor
    assert torch.allclose(centre[:, 0], centre[:, 1], atol=1e-5)  # grey stays grey


def test_random_erasing_blanks_a_box_of_the_promised_size():
    torch.manual_seed(3)
    bright = torch.full((200, 3, 64, 64), 200, dtype=torch.uint8)
    out = _augment(augment="none", random_erasing=1.0)(bright)
    erased = (out == 0).all(1)  # normalised value 0 on every channel
    fractions = erased.float().mean((1, 2))
    assert (fractions > 0).float().mean() > 0.9  # nearly every image (a few find no box)
    hit = fractions[fractions > 0]
    assert hit.min() >= 0.015 and hit.max() <= 0.35
    for mask in erased[fractions > 0][:20]:  # each erased area is one solid rectangle
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all()


@pytest.mark.parametrize("policy", AUGMENTS.names())
def test_every_policy_runs_batched(policy):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 72, 72), dtype=torch.uint8)
    out = _augment(augment=policy, random_erasing=0.5)(images)
    assert out.shape == (6, 3, 64, 64) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert not torch.equal(out[0], out[1])


def test_both_paths_yield_the_same_samples_in_the_same_order():
    data = tiny_trial_data(n=10, image_size=32)
    for path in ("device", "loader"):
        cfg = TrialConfig.from_dict(
            {"model": "small_cnn", "augment": "none", "batch_size": 4, "data_path": path}
        )
        order = torch.randperm(10, generator=torch.Generator().manual_seed(5)).tolist()
        batches = list(training_batches(cfg, data, order, torch.device("cpu")))
        labels = torch.cat([y for _, y in batches]).numpy()
        assert [len(y) for _, y in batches] == [4, 4, 2]
        assert np.array_equal(labels, data.train_labels[order])
        if path == "device":
            device_x = torch.cat([x for x, _ in batches])
        else:
            assert torch.allclose(torch.cat([x for x, _ in batches]), device_x, atol=1e-6)


def test_batched_blur_equals_torchvision_gaussian_blur():
    from torchvision.transforms.v2 import functional as TF

    x = torch.rand(4, 3, 20, 20)
    torch.manual_seed(0)
    out = BatchAugment._blur(x, 1.0)
    torch.manual_seed(0)
    torch.rand(4)  # the draw that chose the images
    sigma = torch.empty(4).uniform_(0.1, 2.0)
    expected = torch.stack(
        [TF.gaussian_blur(x[i], [3, 3], [float(sigma[i])] * 2) for i in range(4)]
    )
    assert torch.allclose(out, expected, atol=1e-6)


@pytest.mark.integration  # tens of seconds
def test_images_over_their_device_budget_train_from_host_memory_with_the_same_results(
    colour_handle, caplog
):
    """A tiny budget sends the decoded images to the host path: batches gathered from the
    memory map one at a time. Same seed, same data: the same trial, epoch by epoch, bit for
    bit (here, on the CPU)."""
    from tests_support import fit_trial
    from trainables.core import metrics as M

    runs, said = {}, {}
    library = logging.getLogger("trainables")  # heard here even where show_lines() ran
    library.addHandler(caplog.handler)
    try:
        for budget in (0.0, 0.001):  # 0: in place; 0.001 MB: far less than the images
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="trainables"):
                fitted = fit_trial(
                    colour_handle,
                    {"max_epochs": 3, "early_stop_patience": 0, "image_budget_mb": budget},
                )
            runs[budget] = fitted.reports
            said[budget] = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    finally:
        library.removeHandler(caplog.handler)
    # the slower path is said in a line; the usual one only in the images_on column
    assert not any(m.startswith("images:") for m in said[0.0]), said[0.0]
    assert [m for m in said[0.001] if m.startswith("images: host")], said[0.001]
    assert {r[M.IMAGES_ON] for r in runs[0.0]} == {"device"}
    assert {r[M.IMAGES_ON] for r in runs[0.001]} == {"host"}
    for key in (M.TRAIN_LOSS, M.VAL_LOSS, M.BEST_VAL_ACC, M.TEST_ACC):  # bit for bit
        assert [r[key] for r in runs[0.0]] == [r[key] for r in runs[0.001]], key
