"""Predict the classes of a folder of images with an exported model.

    python sweeps/predict.py EXPORT_DIR IMAGES_DIR [--out predictions.csv]
                             [--tta [off|flip|dihedral]]
                             [--runtime torch|export|onnx] [--coverage 0.9 [--per-class]]
                             [--uncalibrated]

Every image under IMAGES_DIR (recursively) gets one row: its path, the predicted class, its
probability, and the probability of every class, calibrated by the trial's temperature
(``--uncalibrated``: the network's own softmax). With ``--coverage``, also the prediction
set: the classes that hold the true one with that probability (split conformal, calibrated
on the trial's validation images; ``--per-class``: for every class, each calibrated on its
own validation images). An image that cannot be decoded gets a row with the
reason in the ``error`` column; the others are still predicted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from sweeps import cli
from sweeps.experiment.storage import write_atomic
from trainables.core.csvcells import guarded
from trainables.core.errors import UserError
from trainables.data import IMAGE_EXTENSIONS, decode_image, scan, shown
from trainables.deploy.bundle import RUNTIMES, load_export, preprocess, runtime_of, softmax
from trainables.recipe.augment import TTA_VIEWS
from trainables.stats.calibration import cutoffs, sets


def predict(run, spec, paths: list[Path], batch_size: int, temperature: float = 1.0):
    """(probabilities of the decoded images, {path: error} of the others); ``run`` maps the
    network's input to logits (deploy.runtime_of: with test-time views, the log of their
    mean probabilities)."""
    from trainables.stats.calibration import scaled

    probs, errors, done = [], {}, []
    for start in range(0, len(paths), batch_size):
        images = []
        for path in paths[start : start + batch_size]:
            try:
                images.append(decode_image(path, spec.load_size, spec.interpolation))
                done.append(path)
            except Exception as exc:  # unreadable, truncated, not an image: report, go on
                reason = str(exc).replace(str(path), path.name)
                errors[path] = f"{type(exc).__name__}: {reason}"[:200]
        if not images:
            continue
        x = preprocess(np.stack(images), spec)
        p = softmax(run(x))
        probs.append(scaled(p, temperature) if temperature != 1.0 else p)
    return done, (np.concatenate(probs) if probs else np.zeros((0, spec.num_classes))), errors


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__, "python sweeps/predict.py")
    parser.add_argument("export", metavar="EXPORT_DIR")
    parser.add_argument("images", metavar="IMAGES_DIR")
    parser.add_argument(
        "--out", default="predictions.csv", help="CSV to write (default predictions.csv)"
    )
    parser.add_argument("--batch-size", type=cli.number(int, low=1), default=64)
    parser.add_argument(
        "--tta",
        nargs="?",
        const="flip",
        choices=tuple(TTA_VIEWS),
        help="test-time views to average: off, flip (the mirror image; a bare --tta) or "
        "dihedral (the 8 symmetries of the square); default: the export's own (spec.json's "
        "tta, the trial's)",
    )
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="torch",
        help="torch: the rebuilt network (default); export: model.pt2; "
        "onnx: model.onnx in ONNX Runtime",
    )
    parser.add_argument(
        "--coverage",
        type=cli.number(float, above=0, high=0.999),
        help="also the prediction set that holds the true class with this probability, e.g. 0.9",
    )
    parser.add_argument(
        "--per-class",
        action="store_true",
        help="with --coverage: sets that hold the true class with that "
        "probability for every class (Mondrian), not on average",
    )
    parser.add_argument(
        "--uncalibrated",
        action="store_true",
        help="the network's own softmax, not calibrated by the temperature",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; name the CSV file to write")
    if not out.resolve().parent.is_dir():
        raise UserError(
            f"--out {out}: its folder {out.resolve().parent} does not exist; "
            "create it or write elsewhere"
        )
    spec, net = load_export(args.export)
    root = Path(args.images)
    if not root.is_dir():
        raise UserError(f"{root}: not a folder; pass the folder that holds the images")
    cutoff = None
    if args.per_class and args.coverage is None:
        raise UserError("--per-class shapes prediction sets: add --coverage, e.g. 0.9")
    if args.coverage is not None:
        if args.uncalibrated:
            raise UserError("--coverage needs calibrated probabilities: drop --uncalibrated")
        try:
            cutoff = cutoffs(spec.calibration, args.coverage, args.per_class)
        except ValueError as exc:
            raise UserError(f"--coverage: {exc}") from None
    run = runtime_of(Path(args.export), args.runtime, spec, net, tta=args.tta)
    paths, rejected = scan(root)  # rejected: named like images, never opened (pipes, ...)
    if not paths and not rejected:
        raise UserError(f"{root}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under it")
    temperature = 1.0 if args.uncalibrated else spec.temperature
    done, probs, errors = predict(run, spec, paths, args.batch_size, temperature)
    errors.update(rejected)

    def name(path: Path) -> str:
        return shown(path.relative_to(root))

    table = pd.DataFrame(
        {
            "path": [name(p) for p in done],
            "predicted": [spec.class_names[i] for i in probs.argmax(1)],
            "probability": probs.max(1) if len(done) else [],
            **{f"p_{name}": probs[:, k] for k, name in enumerate(spec.class_names)},
            **(_set_columns(probs, cutoff, spec) if cutoff is not None else {}),
            "error": "",
        }
    )
    failed = pd.DataFrame({"path": [name(p) for p in errors], "error": list(errors.values())})
    table = pd.concat([table, failed], ignore_index=True).sort_values("path")
    write_atomic(out.resolve(), guarded(table).to_csv(index=False))
    print(f"{len(done)} images predicted, {len(errors)} unreadable -> {out}")
    for path, error in list(errors.items())[:5]:
        print(f"unreadable: {name(path)}: {error}", file=sys.stderr)
    return 1 if errors else 0


def _set_columns(probs: np.ndarray, cutoff: float, spec) -> dict:
    """Each image's prediction set ("a | b"), and its size."""
    chosen = sets(probs, cutoff)
    return {
        "set": [
            " | ".join(c for c, inside in zip(spec.class_names, row) if inside) for row in chosen
        ],
        "set_size": chosen.sum(1),
    }


def cli_main() -> None:
    cli.run(main)


if __name__ == "__main__":
    cli.as_process(cli_main)
