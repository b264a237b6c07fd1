"""Data as it really comes: every common image kind, odd paths, copies across splits,
imbalance. All images are real files written with Pillow and read by the real loader."""

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import make_image_folder
from trainables import data as D

# folder and class names as they come from phones and shared drives
ODD_ROOT = "[Team] project 2/Split_Data(8:1:1)"
CLASSES = {
    "잎마름병 (blight)": (200, 40, 40),
    "정상: healthy": (40, 180, 60),
    "Ölflecken [spots]": (40, 60, 200),
}


def _solid(colour, size=(48, 36)) -> Image.Image:
    return Image.new("RGB", size, colour)


def write_every_kind(folder: Path, colour) -> dict[str, str]:
    """One image of each kind a user's folder holds; returns file name -> kind."""
    folder.mkdir(parents=True, exist_ok=True)
    kinds = {}

    def save(name, image, kind, **kwargs):
        image.save(folder / name, **kwargs)
        kinds[name] = kind

    save("photo.jpg", _solid(colour), "jpeg")
    save("PHOTO_UPPER.JPEG", _solid(colour), "jpeg, upper-case extension")
    save("scan.png", _solid(colour), "png")
    save("old.BMP", _solid(colour), "bmp")
    save("web.webp", _solid(colour), "webp")
    save("scan.TIF", _solid(colour), "tiff")
    rgba = _solid(colour).convert("RGBA")
    rgba.putalpha(255)
    save("alpha.png", rgba, "rgba png")
    save("palette.png", _solid(colour).quantize(8), "palette png")
    save("print.jpg", _solid(colour).convert("CMYK"), "cmyk jpeg")
    save("tiny.png", _solid(colour, (3, 2)), "3x2 pixels")
    save("huge.jpg", _solid(colour, (4000, 3000)), "12 megapixels", quality=80)
    grey = int(np.mean(colour))
    save("grey.png", Image.new("L", (40, 40), grey), "grayscale")
    wide = np.full((30, 30), grey * 257, dtype=np.uint16)
    save("deep.png", Image.fromarray(wide), "16-bit png")
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise to view
    save("rotated.jpg", _solid(colour, (60, 30)), "exif-rotated jpeg", exif=exif)
    # clutter that must be ignored
    (folder / ".DS_Store").write_bytes(b"\0\1\2")
    (folder / "Thumbs.db").write_bytes(b"\0")
    (folder / "README.txt").write_text("notes")
    (folder / ".ipynb_checkpoints").mkdir()
    _solid((0, 0, 0)).save(folder / ".ipynb_checkpoints" / "photo-checkpoint.jpg")
    return kinds


def make_odd_dataset(base: Path) -> Path:
    root = base / ODD_ROOT
    for name, colour in CLASSES.items():
        write_every_kind(root / name, colour)
    buffer = io.BytesIO()
    _solid((1, 2, 3)).save(buffer, format="JPEG")
    first = next(iter(CLASSES))
    (root / first / "cut_off.jpg").write_bytes(buffer.getvalue()[:200])  # truncated JPEG
    return root


def test_every_kind_of_image_decodes_with_its_colour(tmp_path):
    root = make_odd_dataset(tmp_path)
    source = D.discover(root)
    assert set(source.class_names) == set(CLASSES)
    handle, report = D.prepare(source, 32, tmp_path / "cache", progress=False)
    assert report["images_found"] == 3 * 14 + 1
    assert report["images_used"] == 3 * 14
    assert [s["path"] for items in report["skipped"].values() for s in items] == [
        f"{next(iter(CLASSES))}/cut_off.jpg"
    ]
    images = handle.images(32)
    for row, label in zip(handle.rows, handle.labels):
        pixel = images[row].reshape(-1, 3).mean(0)
        name = handle.files[row]
        colour = np.array(CLASSES[handle.class_names[label]])
        if "grey" in name or "deep" in name:
            expected = np.full(3, colour.mean())
        else:
            expected = colour
        tolerance = 40 if "print" in name else 12  # CMYK round trip is approximate
        assert np.abs(pixel - expected).max() < tolerance, (name, pixel, expected)


def test_exif_rotation_gives_a_portrait_view(tmp_path):
    image = Image.new("RGB", (60, 30), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 30, 30))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise to view: left half goes down
    image.save(tmp_path / "r.jpg", exif=exif, quality=95)
    decoded = D.decode_image(tmp_path / "r.jpg", 30)
    assert decoded[-1, :, 2].mean() > 150 and decoded[0, :, 0].mean() > 150


def test_copies_across_presplit_folders_are_reported_as_leakage(tmp_path):
    root = tmp_path / "pre"
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        for name, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                noisy = np.clip(np.array(colour) + rng.normal(0, 30, (16, 16, 3)), 0, 255)
                Image.fromarray(noisy.astype(np.uint8)).save(root / split / name / f"{i}.png")
    shutil.copy(root / "train" / "a" / "0.png", root / "test" / "a" / "copy.png")
    shutil.copy(root / "train" / "b" / "1.png", root / "val" / "a" / "mislabelled.png")
    handle, report = D.prepare(D.discover(root), 16, tmp_path / "cache", progress=False)
    assert report["duplicate_images"] == 2
    leaked = sorted(tuple(sorted(d["split"] for d in group)) for group in report["leakage"])
    assert leaked == [("test", "train"), ("train", "val")]
    assert len(report["label_conflicts"]) == 1
    assert {d["class"] for d in report["label_conflicts"][0]} == {"a", "b"}


def test_copies_in_an_unsplit_folder_stay_in_one_split(tmp_path):
    root = make_image_folder(tmp_path / "imgs", per_class=20)
    for i in range(5):  # five copies of one image: a random split would scatter them
        shutil.copy(root / "red" / "img_000.JPG", root / "red" / f"copy_{i}.JPG")
    for seed in range(3):
        handle, report = D.prepare(
            D.discover(root), 16, tmp_path / "cache", progress=False, split_seed=seed
        )
        copies = [
            s
            for r, s in zip(handle.rows, handle.splits)
            if handle.files[r].startswith(("red/copy_", "red/img_000"))
        ]
        assert len(copies) == 6 and len(set(copies)) == 1
        assert report["leakage"] == [] and report["duplicate_images"] == 5


def test_imbalance_is_measured(tmp_path):
    root = make_image_folder(tmp_path / "imgs", per_class=10)
    for i in range(10, 60):
        shutil.copy(root / "red" / "img_001.png", root / "red" / f"more_{i}.png")
        # distinct bytes, so the copies are not treated as one image
        with open(root / "red" / f"more_{i}.png", "ab") as f:
            f.write(bytes([i]))
    _, report = D.prepare(D.discover(root), 16, tmp_path / "cache", progress=False)
    assert report["imbalance_ratio"] == pytest.approx(48 / 8, rel=0.01)
    assert json.loads(json.dumps(report)) == report  # saved as JSON, read back the same


def _ramp_png16(path: Path, top: int) -> None:
    Image.fromarray(np.linspace(0, top, 64 * 64).reshape(64, 64).astype(np.uint16)).save(path)


DECODING = {  # file -> (how it is written, the mean grey it must decode to, or the reason)
    "16-bit ramp to 256 of 65535": (lambda p: _ramp_png16(p, 256), 0.5),
    "16-bit ramp to 255 of 65535": (lambda p: _ramp_png16(p, 255), 0.5),
    "16-bit full ramp": (lambda p: _ramp_png16(p, 65535), 127.5),
    "16-bit mid grey": (
        lambda p: Image.fromarray(np.full((40, 40), 32896, np.uint16)).save(p),
        128.0,
    ),
    "float TIFF in [0, 1]": (
        lambda p: Image.fromarray(np.full((40, 40), 0.5, np.float32)).save(p.with_suffix(".tif")),
        127.5,
    ),
    "float TIFF beyond 1": (
        lambda p: Image.fromarray(np.full((40, 40), 300.0, np.float32)).save(p.with_suffix(".tif")),
        "outside [0, 1]",
    ),
    "32-bit integer TIFF": (
        lambda p: Image.fromarray(np.full((40, 40), 7, np.int32), "I").save(p.with_suffix(".tif")),
        "32-bit integers",
    ),
    # extreme shapes: the centre square of a strip, never the strip resized whole
    "1 x 60000 strip": (lambda p: Image.fromarray(_strip()).save(p), 200.0),
    "60000 x 1 strip": (lambda p: Image.fromarray(_strip().T.copy()).save(p), 200.0),
    "1 x 1 pixel": (lambda p: Image.fromarray(np.full((1, 1), 90, np.uint8)).save(p), 90.0),
}


def _strip() -> np.ndarray:
    """1 x 60000 px: 200 over its middle 2,000 px, 0 elsewhere."""
    strip = np.zeros((1, 60000), np.uint8)
    strip[0, 29000:31000] = 200
    return strip


@pytest.mark.parametrize("case", list(DECODING))
def test_deep_and_float_images_keep_their_intensity_scale_or_are_skipped(case, tmp_path):
    write, expected = DECODING[case]
    path = tmp_path / "image.png"
    write(path)
    path = next(tmp_path.glob("image.*"))
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=re.escape(expected)):
            D.decode_image(path, 32)
        return
    decoded = D.decode_image(path, 32).astype(np.float64)
    assert decoded.mean() == pytest.approx(expected, abs=1.0), case


def test_a_strip_image_decodes_in_little_memory(tmp_path):
    """A 1 x 60000 PNG resized whole to a 64 px short side is 64 x 3,840,000 px (over
    700 MB); decoded as its centre square it takes next to nothing. Measured in a process
    of its own (its peak resident memory)."""
    import subprocess
    import sys

    from helpers import ROOT

    Image.fromarray(_strip()).save(tmp_path / "strip.png")
    probe = (
        "import resource, sys; sys.path.insert(0, sys.argv[1]);"
        "from trainables.data.decode import decode_image;"
        "start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
        "decode_image(sys.argv[2], 64);"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) // 1024)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(ROOT), str(tmp_path / "strip.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) < 50  # MB above the process's peak before decoding
