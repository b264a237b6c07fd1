"""The report's figures, as functions of plain tables and arrays (matplotlib, files only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sweeps.experiment.files import PROGRESS_CSV
from trainables.core import metrics as M


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    # names are the user's (class folders, variants): "$x$" is text, never TeX to parse
    matplotlib.rcParams["text.parse_math"] = False
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
        progress = trial_dir / PROGRESS_CSV if trial_dir else None
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
    for ax, title in zip(
        axes.flat, ("train loss", "validation loss", "train accuracy", "validation accuracy")
    ):
        ax.set_title(title)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = [
        plt.Line2D([], [], color=colours(i % colours.N), label=v) for i, v in enumerate(variants)
    ]
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def accuracy_by_group(results: pd.DataFrame, group_key: str | None) -> pd.DataFrame:
    """Per variant: the test accuracy to plot and its error bar. With several seeds per
    variant, the mean and the standard deviation over seeds; with one, the trial's value and
    its 95% Wilson interval. ``group`` is the value of ``group_key`` (the study's first
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
            bar = bar[len(group) + 1 :]
        rows.append({"group": group, "bar": bar, "value": value, "low": low, "high": high})
    out = pd.DataFrame(rows)
    out.attrs["error_bars"] = "mean ± std over seeds" if several_seeds else "95% Wilson interval"
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
        ax.bar(
            x,
            part["value"],
            width,
            label=name or None,
            yerr=np.nan_to_num(errors.clip(min=0)),
            capsize=3,
        )
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


CELL_COUNTS_UP_TO = 30  # classes up to which every cell's count is written into it
CLASS_LABELS_UP_TO = 60  # classes up to which every class is named on the axes
FIGURE_INCHES_AT_MOST = 16.0


def confusion_figure(matrix: np.ndarray, class_names: list[str], title: str):
    """The confusion matrix as an image. Its size is capped (300 classes drew a
    137-inch figure with 90,000 texts, gigabytes): beyond CELL_COUNTS_UP_TO classes the
    cells are colour only, beyond CLASS_LABELS_UP_TO every n-th class is named."""
    plt = pyplot()
    k = len(class_names)
    side = min(FIGURE_INCHES_AT_MOST, 2 + 0.45 * k)
    fig, ax = plt.subplots(figsize=(side, side - 0.4))
    ax.imshow(matrix, cmap="Blues", interpolation="nearest")
    if k <= CELL_COUNTS_UP_TO:
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    int(matrix[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black",
                )
    step = -(-k // CLASS_LABELS_UP_TO)
    ticks = list(range(0, k, step))
    names = [class_names[i] for i in ticks]
    ax.set_xticks(ticks, names, rotation=90, fontsize=7)
    ax.set_yticks(ticks, names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def parallel_coordinates(table: pd.DataFrame, keys: list[str], score: str, path: Path) -> bool:
    """Every trial as a line across its settings and its score (colour: the score, darker is
    lower, i.e. better for a loss). Numeric axes run from their smallest value to their
    largest (log-spaced when they span a factor of 10 or more); categories sit evenly."""
    plt = pyplot()
    rows = table.dropna(subset=[score])
    axes_keys = [k for k in keys if k in rows and rows[k].nunique() > 1] + [score]
    if len(rows) < 2 or len(axes_keys) < 2:
        return False
    positions, ticks = {}, {}
    for key in axes_keys:
        values = rows[key]
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.notna().all() and not values.map(lambda v: isinstance(v, bool)).any():
            low, high = float(numeric.min()), float(numeric.max())
            logged = low > 0 and high / low >= 10
            scale = np.log10 if logged else (lambda v: v)
            span = (scale(high) - scale(low)) or 1.0
            positions[key] = (scale(numeric.to_numpy(float)) - scale(low)) / span
            ticks[key] = [(0.0, f"{low:.3g}"), (1.0, f"{high:.3g}")]
        else:
            categories = sorted(values.astype(str).unique())
            where = {c: i / max(1, len(categories) - 1) for i, c in enumerate(categories)}
            positions[key] = values.astype(str).map(where).to_numpy(float)
            ticks[key] = [(where[c], c) for c in categories]
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(axes_keys)), 4.5))
    colour = plt.get_cmap("viridis_r")
    scores = rows[score].to_numpy(float)
    spread = (scores.max() - scores.min()) or 1.0
    x = np.arange(len(axes_keys))
    for i in range(len(rows)):
        ax.plot(
            x,
            [positions[k][i] for k in axes_keys],
            alpha=0.7,
            linewidth=1.2,
            color=colour((scores[i] - scores.min()) / spread),
        )
    for j, key in enumerate(axes_keys):
        ax.axvline(j, color="#888", linewidth=0.8)
        for y, label in ticks[key]:
            ax.text(j + 0.03, y, label, fontsize=7, va="center")
    ax.set_xticks(x, axes_keys)
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"Every trial's settings and {score} (darker: lower)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def pareto_figure(panels: list[tuple[pd.DataFrame, str, str]], path: Path) -> None:
    """Test accuracy (with its 95% interval) against each cost: one panel per (table, cost
    column, axis label); the variants on the Pareto front are filled, joined and named."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (best, cost, label) in zip(axes[0], panels):
        low = (best[M.TEST_ACC] - best[M.TEST_ACC_LOW]).clip(lower=0)
        high = (best[M.TEST_ACC_HIGH] - best[M.TEST_ACC]).clip(lower=0)
        ax.errorbar(
            best[cost], best[M.TEST_ACC], yerr=[low, high], fmt="none", ecolor="#999", capsize=3
        )
        front = best[best["front"]]
        ax.scatter(
            best[cost],
            best[M.TEST_ACC],
            facecolors="none",
            edgecolors="#1f77b4",
            s=40,
            label="dominated",
        )
        ax.scatter(front[cost], front[M.TEST_ACC], color="#1f77b4", s=40, label="Pareto front")
        ax.plot(front[cost], front[M.TEST_ACC], color="#1f77b4", linewidth=1)
        for i, (_, row) in enumerate(front.iterrows()):  # the others: in the page's table
            ax.annotate(
                str(row["variant"]),
                (row[cost], row[M.TEST_ACC]),
                fontsize=7,
                xytext=(4, -10 - 9 * (i % 3)),
                textcoords="offset points",
            )
        if best[cost].max() / max(best[cost].min(), 1e-12) >= 10:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (95% interval)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        "Accuracy against deployment cost (each variant's best trial by validation loss)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def heatmaps(frames: list[tuple[pd.DataFrame, str]], path: Path) -> None:
    """Variants (rows) by classes (columns), one panel per (table, title), values 0 to 1."""
    plt = pyplot()
    rows, cols = frames[0][0].shape
    fig, axes = plt.subplots(
        1, len(frames), squeeze=False, figsize=(len(frames) * (4.0 + 0.5 * cols), 1.5 + 0.35 * rows)
    )
    for ax, (frame, title) in zip(axes[0], frames):
        image = ax.imshow(frame.to_numpy(float), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        for i in range(rows):
            for j in range(cols):
                ax.text(j, i, f"{frame.iat[i, j]:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(cols), frame.columns, rotation=90, fontsize=7)
        ax.set_yticks(range(rows), frame.index, fontsize=7)
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def thumbnails(images: list[np.ndarray], captions: list[str], path: Path, per_row: int = 6) -> None:
    plt = pyplot()
    rows = (len(images) + per_row - 1) // per_row
    fig, axes = plt.subplots(rows, per_row, figsize=(2.2 * per_row, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(image)
        ax.set_title(caption, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def reliability_figure(
    before, after, temperature: float, eces: tuple[float, float], path: Path
) -> None:
    """Accuracy against confidence per bin (trainables/calibration.reliability), before
    and after temperature scaling; the diagonal is perfect calibration."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    for bins, label, colour in (
        (before, f"softmax (ECE {eces[0]:.3f})", "tab:red"),
        (after, f"T = {temperature:.2f} (ECE {eces[1]:.3f})", "tab:blue"),
    ):
        if bins:
            conf, acc, count = zip(*bins)
            ax.plot(conf, acc, marker="o", color=colour, label=label)
    ax.set_xlabel("confidence of the predicted class")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
