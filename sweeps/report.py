"""One HTML report of a finished experiment, with its plots beside it as PNG files.

    python sweeps/report.py EXPERIMENT_DIR [--compare ID ID] [--confusion 2]

Writes EXPERIMENT_DIR/report/report.html (self-contained: the plots are embedded) and the
PNGs: learning curves per variant, test accuracy by strategy group with 95% intervals,
confusion matrices of the best trials. The ranked table carries each test metric's 95%
bootstrap interval, and McNemar's test says whether the winner is distinguishable from the
runner-up (or from any trial named with --compare). The best trial's confusion matrix and
precision-recall curves also go to TensorBoard, under that trial.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from sweeps.cli import run as run_command
from sweeps.ensemble import write_atomic
from sweeps.experiment import Experiment, TrialPredictions, load_experiment, load_trial
from sweeps.results import with_intervals
from trainables import evaluation as E
from trainables import metrics as M
from trainables.errors import UserError

REPORT_DIR = "report"
TB_SUFFIX = ".evaluation"  # the event file the report adds to the best trial's folder


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def learning_curves(experiment: Experiment, path: Path) -> bool:
    """Train/val loss and accuracy per epoch, one line per trial, coloured by variant."""
    plt = _pyplot()
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
    plt = _pyplot()
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
    plt = _pyplot()
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


def best_two(results: pd.DataFrame) -> tuple[str, str] | None:
    """The table's best trial and the best trial of another variant (the runner-up)."""
    ranked = results.sort_values(M.TEST_ACC, ascending=False, kind="stable")
    if ranked.empty:
        return None
    first = ranked.iloc[0]
    others = ranked[ranked["variant"] != first["variant"]]
    if others.empty:
        others = ranked.iloc[1:]
    return (str(first["trial_id"]), str(others.iloc[0]["trial_id"])) if len(others) else None


def tensorboard_evaluation(experiment: Experiment, trial: TrialPredictions) -> Path:
    """The trial's test confusion matrix (image) and per-class precision-recall curves,
    written beside its training curves so TensorBoard shows them under the same run."""
    from torch.utils.tensorboard import SummaryWriter

    plt = _pyplot()
    labels, predicted = experiment.test_labels, trial.test_probs.argmax(1)
    matrix = np.asarray(E.per_class_report(labels, predicted, experiment.class_names)["confusion"])
    trial_dir = experiment.trial_dir(trial.trial_id)
    for earlier in experiment.root.glob(f"*/events.out.tfevents.*{TB_SUFFIX}"):
        earlier.unlink()  # a report made again replaces its plots instead of adding more
    writer = SummaryWriter(log_dir=str(trial_dir), filename_suffix=TB_SUFFIX)
    fig = confusion_figure(matrix, experiment.class_names, f"{trial.variant}: test")
    writer.add_figure("test/confusion_matrix", fig, global_step=0, close=True)
    plt.close("all")
    for k, name in enumerate(experiment.class_names):
        writer.add_pr_curve(f"test/pr_curve/{name}", labels == k, trial.test_probs[:, k],
                            global_step=0)
    writer.close()
    return trial_dir


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def build_report(experiment: Experiment, out: Path, compare: list[str] | None,
                 confusion: int) -> tuple[Path, list[str]]:
    out.mkdir(parents=True, exist_ok=True)
    results = experiment.results()
    if results.empty:
        raise UserError(f"{experiment.root}: no trial gave a result (all failed or stuck at "
                        "chance); nothing to report")
    sections, lines = [], []
    if learning_curves(experiment, out / "learning_curves.png"):
        sections.append(("Learning curves", _image(out / "learning_curves.png")))

    group_key = _group_key(experiment)
    bars = accuracy_by_group(results, group_key)
    accuracy_chart(bars, out / "test_accuracy.png")
    sections.append(("Test accuracy by " + (group_key or "variant")
                     + " (trials that gave a result)",
                     _image(out / "test_accuracy.png")))

    pair = tuple(compare) if compare else best_two(results)
    if pair:
        try:
            a, b = (load_trial(experiment, t) for t in pair)
        except UserError as error:
            if compare:  # named by the user: their pair or nothing
                raise
            lines.append(f"no McNemar test: {error}")
        else:
            test = E.mcnemar(experiment.test_labels, a.test_probs.argmax(1),
                             b.test_probs.argmax(1))
            lines.append(test.line(f"{a.variant}[{a.trial_id}]", f"{b.variant}[{b.trial_id}]"))

    figures = []
    ranked = results.sort_values(M.TEST_ACC, ascending=False, kind="stable")
    best_trial = None
    for trial_id in ranked["trial_id"].astype(str).head(confusion):
        try:
            trial = load_trial(experiment, trial_id)
        except UserError as error:
            lines.append(f"no confusion matrix: {error}")
            continue
        best_trial = best_trial or trial
        matrix = np.asarray(E.per_class_report(experiment.test_labels,
                                               trial.test_probs.argmax(1),
                                               experiment.class_names)["confusion"])
        fig = confusion_figure(matrix, experiment.class_names,
                               f"{trial.variant} [{trial_id}]: test")
        path = out / f"confusion_{trial_id}.png"
        fig.savefig(path, dpi=90)
        _pyplot().close(fig)
        figures.append(_image(path))
    if figures:
        sections.append(("Confusion matrices of the best trials (test split)",
                         "\n".join(figures)))
    if best_trial is not None:
        where = tensorboard_evaluation(experiment, best_trial)
        lines.append(f"TensorBoard: confusion matrix and PR curves of {best_trial.variant}"
                     f"[{best_trial.trial_id}] in {where}")

    table = with_intervals(experiment.table.drop(columns=["error"], errors="ignore"))
    page = _page(experiment, sections, table, lines)
    path = out / "report.html"
    write_atomic(path, page)
    return path, lines


def _group_key(experiment: Experiment) -> str | None:
    sweep = experiment.root / "sweep.json"
    if not sweep.exists():
        return None
    try:
        from search_spaces import get_space

        keys = get_space(json.loads(sweep.read_text())["space"]).variant_keys
    except Exception:  # a space renamed since: plot one bar per variant
        return None
    return keys[0] if len(keys) >= 2 and keys[0] in experiment.table else None


def _page(experiment: Experiment, sections, table: pd.DataFrame, lines: list[str]) -> str:
    body = [f"<h1>{html.escape(experiment.root.name)}</h1>",
            f"<p>{len(experiment.table)} trials; test split of {len(experiment.test_labels)} "
            f"images in {len(experiment.class_names)} classes. Test metrics carry their 95% "
            "bootstrap interval.</p>"]
    if lines:
        body.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>")
    body.append("<h2>Ranked trials</h2>")
    body.append(table.to_html(index=False, classes="ranked", border=0, na_rep="",
                              float_format=lambda v: f"{v:.4g}"))
    for title, content in sections:
        body.append(f"<h2>{html.escape(title)}</h2>\n{content}")
    style = ("body{font-family:sans-serif;margin:2em;color:#222}"
             "table.ranked{border-collapse:collapse;font-size:13px}"
             "table.ranked td,table.ranked th{padding:3px 8px;border-bottom:1px solid #ddd}"
             "img{max-width:100%;margin:0.5em 0}")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(experiment.root.name)}: report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", metavar="EXPERIMENT_DIR")
    parser.add_argument("--compare", nargs=2, metavar="ID",
                        help="McNemar's test between these two trials (default: the best trial "
                             "and the best trial of another variant)")
    parser.add_argument("--confusion", type=int, default=2,
                        help="confusion matrices for this many of the best trials (default 2)")
    parser.add_argument("--out", help=f"folder of the report (default EXPERIMENT_DIR/{REPORT_DIR})")
    args = parser.parse_args(argv)
    if args.confusion < 0:
        raise UserError(f"--confusion {args.confusion}: must be 0 or more")
    experiment = load_experiment(args.experiment)
    path, lines = build_report(experiment, Path(args.out or experiment.root / REPORT_DIR),
                               args.compare, args.confusion)
    for line in lines:
        print(line)
    print(f"report: {path}")
    return 0


def cli() -> None:
    run_command(main)


if __name__ == "__main__":
    cli()
