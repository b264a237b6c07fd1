"""Predict the classes of a folder of images with an exported model.

    python sweeps/predict.py EXPORT_DIR IMAGES_DIR [--out predictions.csv] [--tta]

Every image under IMAGES_DIR (recursively) gets one row: its path, the predicted class, its
probability, and the probability of every class. An image that cannot be decoded gets a row
with the reason in the ``error`` column; the others are still predicted.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sweeps import cli
from sweeps.experiment.storage import write_atomic
from trainables.data import IMAGE_EXTENSIONS, decode_image, scan, shown
from trainables.deploy import TORCHSCRIPT_FILE, load_export, preprocess
from trainables.csvcells import guarded
from trainables.errors import UserError


def predict(net, spec, paths: list[Path], batch_size: int, tta: bool):
    """(probabilities of the decoded images, {path: error} of the others)."""
    probs, errors, done = [], {}, []
    for start in range(0, len(paths), batch_size):
        images = []
        for path in paths[start:start + batch_size]:
            try:
                images.append(decode_image(path, spec.load_size, spec.interpolation))
                done.append(path)
            except Exception as exc:  # unreadable, truncated, not an image: report, go on
                errors[path] = f"{type(exc).__name__}: {str(exc).replace(str(path), path.name)}"[:200]
        if not images:
            continue
        x = preprocess(np.stack(images), spec)
        with torch.no_grad():
            logits = net(x)
            p = logits.softmax(1)
            if tta:
                p = (p + net(x.flip(-1)).softmax(1)) / 2
        probs.append(p.numpy())
    return done, (np.concatenate(probs) if probs else np.zeros((0, spec.num_classes))), errors


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__, "python sweeps/predict.py")
    parser.add_argument("export", metavar="EXPORT_DIR")
    parser.add_argument("images", metavar="IMAGES_DIR")
    parser.add_argument("--out", default="predictions.csv", help="CSV to write "
                                                                 "(default predictions.csv)")
    parser.add_argument("--batch-size", type=cli.number(int, low=1), default=64)
    parser.add_argument("--tta", action="store_true",
                        help="average each image's probabilities with its mirror image's")
    parser.add_argument("--torchscript", action="store_true",
                        help=f"run {TORCHSCRIPT_FILE} instead of the rebuilt model")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; name the CSV file to write")
    if not out.resolve().parent.is_dir():
        raise UserError(f"--out {out}: its folder {out.resolve().parent} does not exist; "
                        "create it or write elsewhere")
    spec, net = load_export(args.export)
    root = Path(args.images)
    if not root.is_dir():
        raise UserError(f"{root}: not a folder; pass the folder that holds the images")
    if args.torchscript:
        with warnings.catch_warnings():  # deprecated in favour of torch.export; still works
            warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
            model = torch.jit.load(str(Path(args.export) / TORCHSCRIPT_FILE), map_location="cpu")
    else:
        def model(x):
            return net(x)[0]
    paths, rejected = scan(root)  # rejected: named like images, never opened (pipes, ...)
    if not paths and not rejected:
        raise UserError(f"{root}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under it")
    done, probs, errors = predict(model, spec, paths, args.batch_size, args.tta)
    errors.update(rejected)

    def name(path: Path) -> str:
        return shown(path.relative_to(root))

    table = pd.DataFrame({"path": [name(p) for p in done],
                          "predicted": [spec.class_names[i] for i in probs.argmax(1)],
                          "probability": probs.max(1) if len(done) else [],
                          **{f"p_{name}": probs[:, k] for k, name in enumerate(spec.class_names)},
                          "error": ""})
    failed = pd.DataFrame({"path": [name(p) for p in errors],
                           "error": list(errors.values())})
    table = pd.concat([table, failed], ignore_index=True).sort_values("path")
    write_atomic(out.resolve(), guarded(table).to_csv(index=False))
    print(f"{len(done)} images predicted, {len(errors)} unreadable -> {out}")
    for path, error in list(errors.items())[:5]:
        print(f"unreadable: {name(path)}: {error}", file=sys.stderr)
    return 1 if errors else 0


def cli_main() -> None:
    cli.run(main)


if __name__ == "__main__":
    cli_main()
