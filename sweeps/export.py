"""Export a trained trial to a folder that ``sweeps/predict.py`` (or plain TorchScript) uses.

    python sweeps/export.py EXPERIMENT_DIR [--trial ID] [--out DIR]

The default trial is the one with the lowest validation loss among those that gave a result
(chosen on validation, as a model to ship should be; not on test). The folder holds the best
weights of that trial, spec.json and model.torchscript.pt.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sweeps.cli import run as run_command
from sweeps.experiment import load_experiment
from trainables import metrics as M
from trainables.config import TrialConfig
from trainables.errors import UserError
from trainables.export import ExportSpec, write_export
from trainables.trainable import BEST_WEIGHTS_FILE, META_FILE
from trainables.transforms import resolve_preprocess


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", metavar="EXPERIMENT_DIR")
    parser.add_argument("--trial", metavar="ID", help="trial_id to export (default: the trial "
                                                      "with the lowest validation loss)")
    parser.add_argument("--out", help="export folder (default EXPERIMENT_DIR/export-TRIAL_ID)")
    args = parser.parse_args(argv)
    experiment = load_experiment(args.experiment)
    if args.trial:
        rows = experiment.table[experiment.table["trial_id"] == args.trial]
        if rows.empty:
            raise UserError(f"trial {args.trial}: not in {experiment.root}/results.csv; its "
                            "trial_id column lists the trials")
    else:
        rows = experiment.results()
        if rows.empty:
            raise UserError(f"{experiment.root}: no trial gave a result; nothing to export")
        rows = rows.loc[[rows[M.BEST_VAL_LOSS].idxmin()]]
    row = rows.iloc[0]
    trial_id = str(row["trial_id"])
    trial_dir = experiment.trial_dir(trial_id)
    checkpoints = sorted(trial_dir.glob("checkpoint_*")) if trial_dir else []
    if not checkpoints or not (checkpoints[-1] / BEST_WEIGHTS_FILE).exists():
        raise UserError(f"trial {trial_id}: no saved best weights (it ended before its first "
                        "validation); export another trial")
    checkpoint = checkpoints[-1]
    meta = json.loads((checkpoint / META_FILE).read_text())
    cfg = TrialConfig.from_dict(meta["config"])
    pre = resolve_preprocess(cfg)
    spec = ExportSpec(
        model=cfg.model, num_classes=int(meta["num_classes"]),
        class_names=[str(c) for c in meta["class_names"]], aux_heads=bool(meta["aux_heads"]),
        head_dropout=cfg.head_dropout, head_hidden=cfg.head_hidden, image_size=pre.image_size,
        load_size=pre.load_size, interpolation=pre.interpolation, mean=list(pre.mean),
        std=list(pre.std),
        source={"experiment": str(experiment.root.resolve()), "trial_id": trial_id,
                "variant": str(row["variant"]), "best_epoch": int(row["best_epoch"]),
                "best_val_loss": float(row[M.BEST_VAL_LOSS]),
                "test_acc": float(row[M.TEST_ACC]), "pretrained": bool(meta["pretrained"])})
    weights = torch.load(checkpoint / BEST_WEIGHTS_FILE, map_location="cpu", weights_only=True)
    out = Path(args.out or experiment.root / f"export-{trial_id}")
    difference = write_export(out, spec, weights)
    print(f"exported {row['variant']} [{trial_id}] (best epoch {int(row['best_epoch'])}, "
          f"val_loss {row[M.BEST_VAL_LOSS]:.4f}, test_acc {row[M.TEST_ACC]:.4f}) to {out}")
    print(f"TorchScript trace checked against the model: largest logit difference "
          f"{difference:.2e}")
    print(f"predict: python sweeps/predict.py '{out}' IMAGES_DIR")
    return 0


def cli() -> None:
    run_command(main)


if __name__ == "__main__":
    cli()
