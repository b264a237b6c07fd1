from collections import Counter

import numpy as np
import pytest
from PIL import Image

from helpers import make_image_folder, make_one_class_folder, write_image
from trainables import data as D
from trainables.core.errors import UserError


def test_discover_finds_classes_and_ignores_clutter(image_folder):
    (image_folder / "red" / ".DS_Store").write_bytes(b"\0\0")
    (image_folder / "red" / "notes.txt").write_text("not an image")
    (image_folder / "red" / "Thumbs.db").write_bytes(b"\0")
    (image_folder / ".ipynb_checkpoints").mkdir()
    write_image(image_folder / ".ipynb_checkpoints" / "x.png", (0, 0, 0), np.random.default_rng(0))
    source = D.discover(image_folder)
    assert source.class_names == ("blue", "green", "red")
    assert Counter(source.labels) == {0: 12, 1: 12, 2: 12}
    assert not source.presplit
    assert all(p.lower().endswith((".png", ".jpg")) for p in source.paths)


def test_stratified_split_is_8_1_1_per_class_and_seeded():
    labels = [0] * 50 + [1] * 30 + [2] * 20
    split = D.stratified_split(labels, seed=3)
    counts = Counter(zip(labels, split))
    assert (counts[(0, "train")], counts[(0, "val")], counts[(0, "test")]) == (40, 5, 5)
    assert (counts[(2, "train")], counts[(2, "val")], counts[(2, "test")]) == (16, 2, 2)
    assert split == D.stratified_split(labels, seed=3)
    assert split != D.stratified_split(labels, seed=4)


def test_split_needs_three_images_per_class():
    with pytest.raises(UserError, match="at least 3"):
        D.stratified_split([0, 0, 0, 1, 1])
    # named as its folder is, not by its label index ("class 1" for folder "3")
    with pytest.raises(UserError, match="class '3' has 2 usable"):
        D.stratified_split([0, 0, 0, 1, 1], class_names=("1", "3"))
    from trainables.data.split import stratified_folds

    with pytest.raises(UserError, match="class '3' has 2 usable image"):
        stratified_folds([0, 0, 0, 1, 1], [0, 1, 2, 3, 4], 3, class_names=("1", "3"))


def test_presplit_root_is_used_as_given(tmp_path):
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        make_image_folder(tmp_path / "root" / split, per_class=n)
    source = D.discover(tmp_path / "root")
    assert source.presplit
    assert Counter(source.splits) == {"train": 18, "val": 6, "test": 9}


def test_presplit_with_different_classes_is_refused(tmp_path):
    for split in ("train", "val", "test"):
        make_image_folder(tmp_path / "root" / split, per_class=2)
    for f in (tmp_path / "root" / "val" / "red").iterdir():
        f.unlink()
    (tmp_path / "root" / "val" / "red").rmdir()
    with pytest.raises(UserError, match="class folders differ.*red"):
        D.discover(tmp_path / "root")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing", "no such directory"),
        (lambda p: (p / "file.txt").write_text("x") and p / "file.txt", "is a file"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "found no images"),
        (lambda p: make_one_class_folder(p / "one"), "only one class"),
    ],
)
def test_bad_roots_are_user_errors(tmp_path, make, message):
    with pytest.raises(UserError, match=message):
        D.discover(make(tmp_path))


def test_decode_is_cached_by_content(image_folder, tmp_path):
    source = D.discover(image_folder)
    digest = D.content_digest(source.paths, D.file_hashes(source.root, source.paths))
    first = D.decode_cached(source.root, source.paths, digest, 16, tmp_path / "cache")
    stamp = first.images.stat().st_mtime_ns
    again = D.decode_cached(source.root, source.paths, digest, 16, tmp_path / "cache")
    assert again.images == first.images and again.images.stat().st_mtime_ns == stamp
    images = np.load(first.images)
    assert images.shape == (36, 16, 16, 3) and images.dtype == np.uint8
    # red images are red after decoding (JPEG and PNG alike)
    red = images[[i for i, lab in enumerate(source.labels) if source.class_names[lab] == "red"]]
    assert (red[..., 0].mean() > 150) and (red[..., 2].mean() < 100)
    # other size: a different file; changed bytes: a different key
    assert (
        D.decode_cached(source.root, source.paths, digest, 20, tmp_path / "cache").images
        != first.images
    )
    write_image(image_folder / "red" / "img_000.JPG", (0, 0, 0), np.random.default_rng(1))
    assert D.content_digest(source.paths, D.file_hashes(source.root, source.paths)) != digest


def test_corrupt_images_are_skipped_counted_and_listed(image_folder, tmp_path):
    good = (image_folder / "red" / "img_001.png").read_bytes()
    (image_folder / "red" / "truncated.png").write_bytes(good[: len(good) // 2])
    (image_folder / "blue" / "not_really.jpg").write_text("hello")
    handle, report = D.prepare(D.discover(image_folder), 32, tmp_path / "cache", progress=False)
    assert report["images_found"] == 38 and report["images_used"] == 36
    assert report["images_skipped"] == 2
    assert [s["path"] for s in report["skipped"]["red"]] == ["red/truncated.png"]
    assert [s["path"] for s in report["skipped"]["blue"]] == ["blue/not_really.jpg"]
    assert all(
        handle.files[r] not in ("red/truncated.png", "blue/not_really.jpg") for r in handle.rows
    )
    assert set(handle.splits) == {"train", "val", "test"}


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # camera says: rotate 90 degrees clockwise to view
    image.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    decoded = D.decode_image(tmp_path / "photo.jpg", 20)
    # after rotation the picture is 20 wide x 40 high with blue on top; the centre crop
    # keeps the middle, so the top rows are bluish and the bottom rows reddish
    assert decoded[0, :, 2].mean() > decoded[0, :, 0].mean()
    assert decoded[-1, :, 0].mean() > decoded[-1, :, 2].mean()


def test_split_file_is_saved_and_reused(image_folder, tmp_path):
    (image_folder / "red" / "broken.png").write_bytes(b"\x89PNG not really")
    source = D.discover(image_folder)
    handle, report = D.prepare(source, 32, tmp_path / "cache", progress=False, split_seed=5)
    (tmp_path / "split.csv").write_text(D.split_csv(handle, report))
    lines = (tmp_path / "split.csv").read_text().splitlines()
    assert lines[0] == "path,class,label,split" and len(lines) == 38
    assert "red/broken.png,red,2,skipped" in lines
    # reused: the same images land in the same splits, whatever the seed
    reused = D.apply_split_file(source, tmp_path / "split.csv")
    handle2, report2 = D.prepare(reused, 32, tmp_path / "cache", progress=False, split_seed=99)
    before = {handle.files[r]: s for r, s in zip(handle.rows, handle.splits)}
    after = {handle2.files[r]: s for r, s in zip(handle2.rows, handle2.splits)}
    assert before == after
    # the same files as before: their decoded images come from the cache (a resumed sweep
    # decodes nothing again), and the unreadable one is still reported
    assert handle2.digest == handle.digest and len(list((tmp_path / "cache").rglob("*.npy"))) == 1
    assert report2["skipped"] == report["skipped"] and report2["images_found"] == 37
    # an image the split skipped stays out, even once it can be read
    (image_folder / "red" / "broken.png").write_bytes(
        (image_folder / "red" / "img_001.png").read_bytes()
    )
    handle3, report3 = D.prepare(
        D.apply_split_file(D.discover(image_folder), tmp_path / "split.csv"),
        32,
        tmp_path / "cache",
        progress=False,
    )
    assert {handle3.files[r] for r in handle3.rows} == set(before)
    assert "reused split.csv" in report3["skipped"]["red"][0]["reason"]


def test_split_file_from_other_data_is_refused(image_folder, tmp_path):
    (tmp_path / "split.csv").write_text("path,split\nred/img_000.JPG,train\n")
    with pytest.raises(UserError, match="image.* of data are not in it"):
        D.apply_split_file(D.discover(image_folder), tmp_path / "split.csv")
    with pytest.raises(UserError, match="cannot be read"):
        D.apply_split_file(D.discover(image_folder), tmp_path / "nope.csv")


def test_demo_data_is_real_digits(tmp_path):
    root = D.demo_root(tmp_path)
    source = D.discover(root)
    assert source.class_names == tuple(str(i) for i in range(10))
    assert len(source.paths) == 1797
    with Image.open(root / source.paths[0]) as image:
        assert image.size == (32, 32)
    assert D.demo_root(tmp_path) == root  # second call reuses the folder


def test_a_class_left_without_a_usable_image_is_named(image_folder, tmp_path):
    broken = image_folder / "purple (scans)"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"\xff\xd8\xff not a real jpeg")
    (broken / "b.png").write_text("nope")
    with pytest.raises(UserError, match=r"purple \(scans\) hold no usable image"):
        D.prepare(D.discover(image_folder), 16, tmp_path / "cache", progress=False)


def test_only_the_documented_formats_are_opened(tmp_path):
    """A GIF, a PPM or an EPS (which Pillow hands to Ghostscript, running its PostScript)
    named .png is not opened by the decoder the sweep, predict and the service share."""
    from PIL import Image, UnidentifiedImageError

    from trainables.data import decode_image

    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    (tmp_path / "eps.png").write_bytes(eps)
    with Image.open(tmp_path / "eps.png") as probe:  # what Pillow alone would do with it
        assert probe.format == "EPS"
    for kind in ("GIF", "PPM"):
        Image.new("RGB", (10, 10), (200, 40, 40)).save(tmp_path / f"{kind}.png", kind)
    for name in ("eps.png", "GIF.png", "PPM.png"):
        with pytest.raises(UnidentifiedImageError):
            decode_image(tmp_path / name, 8)
    Image.new("RGB", (10, 10), (200, 40, 40)).save(tmp_path / "real.png")
    assert decode_image(tmp_path / "real.png", 8).shape == (8, 8, 3)


def test_the_library_logs_its_lines_and_a_command_shows_them_once():
    """The library's progress goes through logging (trainables/core/log.py): printed by
    nothing until show_lines() (the sweep command and a trial's worker call it), then once
    per line, on stderr, however often it was called; a notebook's own logging gets it."""
    import subprocess
    import sys

    from helpers import ROOT

    script = """
import logging
from trainables.core.log import show_lines
from trainables.data.decode import Progress

Progress("decoded", 4, True)(4)  # not shown yet
seen = []
handler = logging.Handler()
handler.emit = lambda record: seen.append(record.getMessage())
logging.getLogger("trainables").addHandler(handler)
logging.getLogger("trainables").setLevel(logging.INFO)
Progress("decoded", 8, True)(8)
assert len(seen) == 1 and seen[0].startswith("decoded 8/8"), seen
show_lines()
show_lines()
Progress("decoded", 2, True)(2)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == ""
    lines = [line for line in out.stderr.splitlines() if line.startswith("decoded")]
    assert len(lines) == 1 and lines[0].startswith("decoded 2/2 ("), out.stderr
