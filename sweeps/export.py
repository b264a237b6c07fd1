"""Export a trained trial to a folder that ``sweeps/predict.py`` uses, or any program with
torch (model.pt2) or an ONNX engine (model.onnx).

    python sweeps/export.py EXPERIMENT_DIR [--trial ID] [--out DIR]

The default trial is the one with the lowest validation loss among those that gave a result
(chosen on validation, as a model to ship should be; not on test). The folder holds the best
weights of that trial, spec.json (the trial's own record of its model and preprocessing, and
its calibration fit on the validation split: the temperature and the scores of conformal
prediction sets), model.pt2 (torch.export) and model.onnx. Every runtime is checked on the
trial's own test images against the probabilities the trial saved, or nothing is exported.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from sweeps import cli
from sweeps.experiment.folder import load_experiment
from trainables.core import metrics as M
from trainables.core.config import coerce
from trainables.core.errors import UserError
from trainables.deploy.bundle import ExportSpec, check_replaceable, write_export
from trainables.trial import checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__, "python sweeps/export.py")
    parser.add_argument("experiment", metavar="EXPERIMENT_DIR")
    parser.add_argument(
        "--trial",
        metavar="ID",
        help="trial_id to export (default: the trial with the lowest validation loss)",
    )
    parser.add_argument("--out", help="export folder (default EXPERIMENT_DIR/export-TRIAL_ID)")
    args = parser.parse_args(argv)
    export(args.experiment, args.trial, args.out)
    return 0


def export(experiment_dir, trial: str | None = None, out=None) -> Path:
    """Export ``trial`` (default: the lowest validation loss) of the experiment; returns the
    export folder."""
    experiment = load_experiment(experiment_dir)
    if trial:
        rows = experiment.table[experiment.table["trial_id"] == trial]
        if rows.empty:
            raise UserError(
                f"trial {trial}: not in {experiment.root}/results.csv; its "
                "trial_id column lists the trials"
            )
    else:
        rows = experiment.results()
        if rows.empty:
            raise UserError(f"{experiment.root}: no trial gave a result; nothing to export")
        rows = rows.loc[[rows[M.BEST_VAL_LOSS].idxmin()]]
    row = rows.iloc[0]
    trial_id = str(row["trial_id"])
    latest = experiment.latest_checkpoint(trial_id)
    if latest is None:
        raise UserError(
            f"trial {trial_id}: no checkpoint (it ended before its first "
            "validation); export another trial"
        )
    out = Path(out or experiment.root / f"export-{trial_id}")
    check_replaceable(out)  # before any work: never a folder that is not an export
    record = checkpoint.read_record(latest)
    weights = checkpoint.read_best_weights(latest)
    saved = checkpoint.read_predictions(latest)
    if saved is None:
        raise UserError(
            f"trial {trial_id}: no saved probabilities to calibrate and check the "
            "export with; export another trial"
        )
    # the trial's test-time views, where it saved their mean (a trial of an older version
    # did not: its export gives the plain network's probabilities)
    tta = coerce("tta", record.config.get("tta", "off"))  # a yes/no of before: flip or off
    if "test_probs_tta" not in saved:
        tta = "off"
    saved = checkpoint.as_exported(saved)
    spec = ExportSpec.from_record(
        record,
        source={
            "experiment": str(experiment.root.resolve()),
            "trial_id": trial_id,
            "variant": str(row["variant"]),
            "best_epoch": int(row["best_epoch"]),
            "best_val_loss": float(row[M.BEST_VAL_LOSS]),
            "test_acc": float(row[M.TEST_ACC]),
            "test_acc_low": float(row[M.TEST_ACC_LOW]),
            "test_acc_high": float(row[M.TEST_ACC_HIGH]),
            "weights": record.model.weights,
        },
        calibration=calibration_of(saved),
        tta=tta,
    )
    check, how = _check_images(record, spec, saved)
    differences = write_export(out, spec, weights, check)
    print(
        f"exported {row['variant']} [{trial_id}] (best epoch {int(row['best_epoch'])}, "
        f"val_loss {row[M.BEST_VAL_LOSS]:.4f}, test_acc {row[M.TEST_ACC]:.4f}) to {out}"
    )
    print(
        f"checked on {how}: largest probability difference "
        + ", ".join(f"{k} {v:.1e}" for k, v in differences.items())
        + f"; temperature {spec.temperature:.3f} (fit on validation)"
    )
    if spec.tta != "off":
        views = "mirror image" if spec.tta == "flip" else "8 dihedral views"
        print(f"test-time views: every runtime averages each image's {views} (tta={spec.tta})")
    print(f"predict: python sweeps/predict.py '{out}' IMAGES_DIR")
    return out


def calibration_of(saved: dict) -> dict:
    """The trial's temperature, fit on its validation probabilities, and the LAC scores of
    its validation images at that temperature (what prediction sets are calibrated on)."""
    from trainables.stats import calibration as C

    temperature = C.fit_temperature(saved["val_probs"], saved["val_labels"])
    skipped = C.calibration_skipped(saved["val_probs"], saved["val_labels"])
    if skipped:
        print(
            f"warning: no temperature fit ({skipped}): probabilities stay as the trial gave "
            "them (temperature 1), and prediction sets are calibrated on these few scores",
            file=sys.stderr,
        )
    calibrated = C.scaled(saved["val_probs"], temperature)
    scores = C.scores(calibrated, saved["val_labels"])
    per_class = C.class_scores(calibrated, saved["val_labels"], calibrated.shape[1])
    return {
        "temperature": temperature,
        "method": "temperature scaling on validation",
        "sets": "split conformal, LAC score, calibrated on validation (per class: "
        "Mondrian, on each class's validation images)",
        "scores": [round(float(v), 6) for v in np.sort(scores)],
        "class_scores": [[round(float(v), 6) for v in k] for k in per_class],
    }


def _check_images(record, spec, saved) -> tuple[tuple | None, str]:
    """The trial's test images as decoded for it, with the probabilities it saved; or None
    (then random inputs) when they cannot all be read here."""
    from trainables.data import decode_image

    root = Path(record.data.get("root", ""))
    try:
        images = np.stack(
            [
                decode_image(root / path, spec.load_size, spec.interpolation)
                for path in saved["test_ids"]
            ]
        )
    except Exception:  # moved, or another machine: say so, check on random inputs
        return None, (
            f"random inputs against the rebuilt network (the trial's test images "
            f"under {root} cannot be read here)"
        )
    return (images, saved["test_probs"]), f"the trial's {len(images)} test images"


def cli_main() -> None:
    cli.run(main)


if __name__ == "__main__":
    cli.as_process(cli_main)
