"""The result table: one row per trial, from the recorder's trial entries.

The recorder rewrites the table (atomically: temp file, then rename) each time a trial ends,
so a crash never leaves a half-written table nor loses finished trials' rows.
"""

from __future__ import annotations

import io
import json
import math
import sys
from typing import Any

import pandas as pd

from sweeps.experiment.files import BEST_CONFIG, BY_VARIANT_CSV, RESULTS_CSV, RESULTS_MD
from sweeps.experiment.storage import Store
from trainables.core import metrics as M
from trainables.core.csvcells import guarded, unguarded

SCORE_COLUMNS = [M.TEST_ACC, M.TEST_MACRO_F1, M.BEST_VAL_ACC, M.BEST_VAL_LOSS, "epochs"]


def plain(value: Any) -> Any:
    """A numpy or torch scalar as the Python number it holds; anything else as it is."""
    return value.item() if hasattr(value, "item") else value


def trial_row(entry, varied_keys: list[str]) -> dict:
    """One table row from what the recorder knows of a trial (``recorder.TrialEntry``)."""
    last = entry.last
    row = {
        "trial_id": entry.trial_id,
        "variant": entry.variant,
        "status": entry.status,
        "stop_reason": entry.stop_reason or M.UNFINISHED,
        "epochs": int(last.get(M.EPOCH, 0)),
        "best_epoch": int(last.get(M.BEST_EPOCH, 0)),
        **{
            key: last.get(key, math.nan)
            for key in (
                M.BEST_VAL_LOSS,
                M.BEST_VAL_ACC,
                M.TEST_ACC,
                M.TEST_MACRO_F1,
                *M.TEST_INTERVALS,
            )
        },
        "pretrained": bool(last.get(M.PRETRAINED, 0)),
        M.WEIGHTS: last.get(M.WEIGHTS, ""),
        **{key: last.get(key, math.nan) for key in M.COSTS},
        M.NODE: last.get(M.NODE, ""),
    }
    row.update(
        {
            key: last[key]
            for key in (M.TEST_ACC_TTA, M.TEST_MACRO_F1_TTA, M.TEST_GRADE_ERROR, *M.CALIBRATION)
            if key in last
        }
    )
    # a varied key named like a column above (pretrained, weights) keeps the column's
    # meaning (what was really loaded); its asked-for value is in the variant name
    row.update({key: plain(entry.config.get(key)) for key in varied_keys if key not in row})
    row["retries"] = entry.retries  # times the trial's worker died and it went on
    row["wall_s"] = round(float(last.get("time_total_s", 0.0)), 1)
    row["error"] = entry.error or last.get(M.ERROR_MESSAGE) or ""
    return row


def by_variant(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per variant, ranked by mean test accuracy. Give it only the
    trials that produced a result: a stuck or failed trial is no measurement."""
    grouped = table.groupby("variant")
    out = grouped[SCORE_COLUMNS].agg(["mean", "std"])
    out.columns = [f"{col}_{stat}" for col, stat in out.columns]
    out.insert(0, "trials", grouped.size())
    out = out.sort_values(f"{M.TEST_ACC}_mean", ascending=False)
    return out.reset_index()


def to_markdown(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False, floatfmt=".4g")


def with_intervals(table: pd.DataFrame) -> pd.DataFrame:
    """For reading: each test metric as 'value [low, high]' (its 95% interval: Wilson for accuracy,
    BCa bootstrap for macro-F1)
    in place of its three numeric columns."""
    out = table.copy()
    for metric in (M.TEST_ACC, M.TEST_MACRO_F1):
        low, high = f"{metric}_low", f"{metric}_high"
        if low not in out:
            continue
        out[metric] = [
            f"{v:.4f} [{lo:.3f}, {hi:.3f}]"
            if pd.notna(v) and pd.notna(lo)
            else ("" if pd.isna(v) else f"{v:.4f}")
            for v, lo, hi in zip(out[metric], out[low], out[high])
        ]
        out = out.drop(columns=[low, high])
    return out


def write_tables(rows: list[dict], store: Store, aggregate: bool = True) -> pd.DataFrame:
    """Write results.csv / results.md (and, with ``aggregate``, the per-variant table when a
    variant has several seeds); returns the per-trial table: results first, by test
    accuracy, then the trials that gave none (failed, stuck at chance)."""
    table = pd.DataFrame(rows)
    table["_no_result"] = table["stop_reason"].isin(M.NOT_A_RESULT)
    table = table.sort_values(
        ["_no_result", M.TEST_ACC, "variant"], ascending=[True, False, True], na_position="last"
    )
    table = table.drop(columns="_no_result").reset_index(drop=True)
    store.write_text(RESULTS_CSV, guarded(table).to_csv(index=False))
    shown = table.drop(columns=["error"]) if not table["error"].any() else table
    markdown = (
        "# Trials (test metrics with their 95% interval: accuracy Wilson, macro-F1 "
        "BCa bootstrap)\n\n" + to_markdown(with_intervals(shown)) + "\n"
    )
    results = table[~table["stop_reason"].isin(M.NOT_A_RESULT)]
    if aggregate and table["variant"].duplicated().any() and not results.empty:
        summary = by_variant(results)
        store.write_text(BY_VARIANT_CSV, guarded(summary).to_csv(index=False))
        markdown += (
            "\n# By variant (mean and std over seeds; failed and stuck trials "
            "left out)\n\n" + to_markdown(summary) + "\n"
        )
    store.write_text(RESULTS_MD, markdown)
    return table


# ------------------------------------------------------------------ end of a run


def finish(recorder, space, plan, store: Store) -> int:
    """Print the table the recorder wrote, the summary, and a search's best configuration."""
    table = None
    if store.exists(RESULTS_CSV):
        table = unguarded(
            pd.read_csv(
                io.StringIO(store.read_text(RESULTS_CSV)),
                keep_default_na=False,
                na_values=[""],
                dtype={"trial_id": str, "variant": str},
            )
        )
    code = print_summary(table, store)
    if plan.searched and table is not None:
        save_best(table, recorder.configs(), space, store)
    return code


def save_best(table, configs: dict, space, store: Store) -> None:
    """The searched configuration with the lowest validation loss, saved to re-run."""
    rows = table[~table["stop_reason"].isin(M.NOT_A_RESULT)]
    if rows.empty:
        print("no searched trial gave a result; nothing to save as best")
        return
    best = rows.loc[rows[M.BEST_VAL_LOSS].idxmin()]
    config = {k: plain(v) for k, v in configs[best["trial_id"]].items()}
    store.write_text(BEST_CONFIG, json.dumps(config, indent=1))
    where = f"{store}/{BEST_CONFIG}"
    print(
        f"best configuration (lowest validation loss: trial {best['trial_id']}, "
        f"val_loss {best[M.BEST_VAL_LOSS]:.4f}, test_acc {best[M.TEST_ACC]:.4f}): {where}"
    )
    print(f"re-run it: python sweeps/run.py --space {space.name} --config '{where}'")
    top = min(3, len(rows))
    if top >= 2:  # the single split's ranking is noise until cross-validated
        print(
            f"settle the best {top} out of fold: python sweeps/confirm.py '{store}' "
            f"--top {top} --folds 5"
        )


# what the terminal shows of a trial (about 110 characters wide); results.csv and results.md
# have every column
TERMINAL_COLUMNS = [
    "variant",
    "stop_reason",
    "epochs",
    M.BEST_VAL_LOSS,
    M.TEST_ACC,
    M.TEST_MACRO_F1,
]


def mean_and_std(summary: pd.DataFrame) -> pd.DataFrame:
    """The per-variant table for reading: each test metric as 'mean ± std' over the seeds."""
    out = summary[["variant", "trials"]].copy()
    for metric in (M.TEST_ACC, M.TEST_MACRO_F1):
        out[metric] = [
            f"{m:.4f} ± {s:.4f}" if pd.notna(s) else f"{m:.4f}"
            for m, s in zip(summary[f"{metric}_mean"], summary[f"{metric}_std"])
        ]
    out[M.BEST_VAL_LOSS] = summary[f"{M.BEST_VAL_LOSS}_mean"]
    return out


def terminal_tables(table: pd.DataFrame, by_variants: bool) -> str:
    """The end-of-sweep table for a terminal: the columns a reader needs, test metrics with
    their intervals; with ``by_variants``, the per-variant means over seeds below it; and the
    error of each failed trial on a line of its own."""
    shown = with_intervals(table)[[c for c in TERMINAL_COLUMNS if c in table]]
    text = "Trials (test metrics with their 95% interval; every column: results.csv)\n\n"
    text += to_markdown(shown) + "\n"
    results = table[~table["stop_reason"].isin(M.NOT_A_RESULT)]
    if by_variants and not results.empty:
        summary = by_variant(results)
        text += "\nBy variant (mean ± std over seeds; best_val_loss: mean)\n\n"
        text += to_markdown(mean_and_std(summary)) + "\n"
    if "error" in table:
        failed = table[[isinstance(e, str) and e != "" for e in table["error"]]]
        for trial_id, variant, error in zip(failed["trial_id"], failed["variant"], failed["error"]):
            text += f"\nerror in {variant} ({trial_id}): {str(error)[:300]}"
    return text


def print_summary(table, store: Store) -> int:
    """Print the table and what ended how; 1 when a trial failed or none finished."""
    if table is None or table.empty:
        print("no trial finished; nothing to tabulate", file=sys.stderr)
        return 1
    print()
    print(terminal_tables(table, store.exists(BY_VARIANT_CSV)))
    reasons = table["stop_reason"]
    print(
        f"{len(table)} trials: "
        + ", ".join(f"{n} {reason}" for reason, n in reasons.value_counts().items())
    )
    table = table.assign(variant=table["variant"].astype(str))
    hints = {
        M.UNFINISHED: "the sweep stopped before they ended; --resume goes on with them",
        M.STUCK_AT_CHANCE: "never above chance: the learning rate is the likely cause "
        "(too high, or too low), or a frozen untrained backbone",
        M.DIVERGED: "loss went NaN/Inf or exploded: try a lower lr",
        M.OOM: "out of memory: smaller batch_size, or fewer trials per GPU",
        M.ERROR: "its error is below the table",
        M.STALLED: "reported nothing for --stall-timeout seconds; its error is below the table",
    }
    for reason, hint in hints.items():
        variants = table.loc[reasons == reason, "variant"].tolist()
        if variants:
            print(f"{reason} ({hint}): {', '.join(variants)}")
    failed = int(reasons.isin(M.FAILED).sum())
    if failed:
        print(f"{failed} of {len(table)} trials failed")
    print(f"table: {store}/{RESULTS_CSV}")
    print(f"TensorBoard: tensorboard --logdir '{store}'")
    return 1 if failed else 0
