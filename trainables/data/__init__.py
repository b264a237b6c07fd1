"""Find images, split them, decode them once, and hand trials a small picklable handle.

source.py   what a data root holds (an image folder, or train/ val/ test/)
split.py    drawn (stratified, seeded) or reused splits (a split.csv read back)
decode.py   decode once per size into a memory-mapped cache keyed by content
handle.py   prepare(): the handle every trial gets, the data report, split.csv's text
demo.py     data sets that ship inside packages, as image folders
transforms.py, batch_augment.py, batches.py   the path from the decoded arrays to the
            loop's batches (imported by the trial, not re-exported here)
"""

from trainables.data.decode import (
    content_digest,
    decode_cached,
    decode_image,
    default_cache_dir,
    file_hashes,
)
from trainables.data.demo import demo_root, resolve_data
from trainables.data.handle import DataHandle, prepare, split_csv
from trainables.data.source import (
    IMAGE_EXTENSIONS,
    SPLITS,
    DataSource,
    discover,
    limit_per_class,
    scan,
    shown,
)
from trainables.data.split import SKIPPED, apply_split_file, stratified_split

__all__ = [
    "DataHandle",
    "DataSource",
    "IMAGE_EXTENSIONS",
    "SKIPPED",
    "SPLITS",
    "apply_split_file",
    "content_digest",
    "decode_cached",
    "decode_image",
    "default_cache_dir",
    "demo_root",
    "discover",
    "file_hashes",
    "limit_per_class",
    "prepare",
    "resolve_data",
    "scan",
    "shown",
    "split_csv",
    "stratified_split",
]
