"""The report's figures, as functions of plain tables and arrays (matplotlib, files only)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from trainables import metrics as M


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def learning_curves(experiment, path: Path) -> bool:
    """Train/val loss and accuracy per epoch, one line per trial, coloured by variant."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    table = experiment.table
    variants = sorted(table["variant"].astype(str).unique())
    colours = plt.get_cmap("tab20" if len(variants) > 10 else "tab10")
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    drawn = False
    for _, row in table.iterrows():
        trial_dir = experiment.trial_dir(str(row["trial_id"]))
        progress = trial_dir / "progress.csv" if trial_dir else None
        if progress is None or not progress.exists():
            continue
        curve = pd.read_csv(progress)
        if curve.empty or M.EPOCH not in curve:
            continue
        colour = colours(variants.index(str(row["variant"])) % colours.N)
        for ax, key in zip(axes.flat, (M.TRAIN_LOSS, M.VAL_LOSS, M.TRAIN_ACC, M.VAL_ACC)):
            if key in curve:
                ax.plot(curve[M.EPOCH], curve[key], color=colour, alpha=0.8, linewidth=1.2)
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    for ax, title in zip(axes.flat, ("train loss", "validation loss", "train accuracy",
                                     "validation accuracy")):
        ax.set_title(title)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = [plt.Line2D([], [], color=colours(i % colours.N), label=v)
               for i, v in enumerate(variants)]
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def accuracy_by_group(results: pd.DataFrame, group_key: str | None) -> pd.DataFrame:
    """Per variant: the test accuracy to plot and its error bar. With several seeds per
    variant, the mean and the standard deviation over seeds; with one, the trial's value and
    its 95% bootstrap interval. ``group`` is the value of ``group_key`` (the study's first
    variant key, such as the strategy), ``bar`` the rest of the variant."""
    several_seeds = results.groupby("variant").size().min() >= 2
    rows = []
    for variant, trials in results.groupby("variant", sort=False):
        acc = trials[M.TEST_ACC]
        if several_seeds:
            value, low, high = acc.mean(), acc.mean() - acc.std(), acc.mean() + acc.std()
        else:
            best = trials.loc[trials[M.BEST_VAL_LOSS].idxmin()]
            value, low, high = best[M.TEST_ACC], best[M.TEST_ACC_LOW], best[M.TEST_ACC_HIGH]
        group = str(trials.iloc[0][group_key]) if group_key else ""
        bar = str(variant)
        if group_key and bar.startswith(group + "-"):
            bar = bar[len(group) + 1:]
        rows.append({"group": group, "bar": bar, "value": value, "low": low, "high": high})
    out = pd.DataFrame(rows)
    out.attrs["error_bars"] = ("mean ± std over seeds" if several_seeds
                               else "95% bootstrap interval")
    return out


def accuracy_chart(bars: pd.DataFrame, path: Path) -> None:
    plt = pyplot()
    groups = list(dict.fromkeys(bars["group"]))
    names = list(dict.fromkeys(bars["bar"]))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups) * max(1, len(names) / 2)), 4.5))
    for j, name in enumerate(names):
        part = bars[bars["bar"] == name].set_index("group").reindex(groups)
        x = np.arange(len(groups)) + (j - (len(names) - 1) / 2) * width
        errors = np.vstack([part["value"] - part["low"], part["high"] - part["value"]])
        ax.bar(x, part["value"], width, label=name or None,
               yerr=np.nan_to_num(errors.clip(min=0)), capsize=3)
    ax.set_xticks(np.arange(len(groups)), groups if groups != [""] else ["all variants"])
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Test accuracy (error bars: {bars.attrs['error_bars']})")
    if len(names) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def confusion_figure(matrix: np.ndarray, class_names: list[str], title: str):
    plt = pyplot()
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(2 + 0.45 * k, 1.6 + 0.45 * k))
    ax.imshow(matrix, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_xticks(range(k), class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(k), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
