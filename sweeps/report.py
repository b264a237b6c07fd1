"""One HTML report of a finished experiment, with its plots beside it as PNG files.

    python sweeps/report.py EXPERIMENT_DIR [--compare ID ID] [--confusion 2] [--pdf]

Writes EXPERIMENT_DIR/report/report.html (self-contained: the plots are embedded; with
--pdf also report.pdf, printed by headless Chromium, a report to hand on) and the
PNGs: learning curves per variant, test accuracy by strategy group with 95% intervals,
confusion matrices of the best trials; which settings mattered (fANOVA and PED-ANOVA
importance, parallel coordinates); what each variant costs (parameters, FLOPs, weights,
CPU latency measured here, in eager torch or, with --runtime onnx, in ONNX Runtime as an
export runs; Pareto plots of accuracy against them; the table with the
latency is report/costs.csv, the sweep's own files are never written); where each variant
fails (per-class recall and F1, the hardest test images). The ranked table carries each
test metric's 95% interval (accuracy: Wilson; macro-F1: BCa bootstrap), and McNemar's test
says whether the winner is distinguishable from the runner-up (or from any trial named
with --compare). A cross-validated experiment's report opens with the out-of-fold ranking
of every variant over all images; its per-trial sections show one fold (--fold). The best
trial's confusion matrix and precision-recall curves also go to TensorBoard, under that
trial.
"""

from __future__ import annotations

import argparse
import base64
import html
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from sweeps import cli
from sweeps.analysis import sections as sections_of
from sweeps.analysis.plots import (
    accuracy_by_group,
    accuracy_chart,
    confusion_figure,
    learning_curves,
    pyplot,
)
from sweeps.driver.claim import within
from sweeps.experiment.files import REPORT_DIR
from sweeps.experiment.folder import (
    Experiment,
    TrialPredictions,
    load_experiment,
    load_trial,
)
from sweeps.experiment.storage import write_atomic
from sweeps.experiment.tables import with_intervals
from trainables.core import metrics as M
from trainables.core.errors import UserError, number_problem
from trainables.core.files import replaced
from trainables.stats import evaluation as E

TB_SUFFIX = ".evaluation"  # the event file the report adds to the best trial's folder
REPORT_PDF = "report.pdf"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PDF_TIMEOUT_S = 120
# headless, offline and alone: no sandbox (it cannot start as root without), no GPU, none of
# the browser's own network traffic, a throw-away profile
BROWSER_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-pdf-header-footer",
)


def find_browser(given: str | None) -> str:
    """The headless browser that prints the report to PDF: ``given`` (--browser), else the
    first of ``BROWSERS`` on the PATH."""
    if given:
        found = shutil.which(given)
        if found is None:
            raise UserError(f"`browser={given}`: no such program; give Chromium's path")
        return found
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    raise UserError(
        "`pdf` prints the report with headless Chromium, which is not installed here: "
        "install it (apt-get install chromium) or pass `browser=PATH`"
    )


def print_pdf(page: Path, pdf: Path, browser: str) -> Path:
    """Print the HTML ``page`` to ``pdf`` with ``browser`` (headless Chromium), whole or not
    at all; a browser that fails or prints nothing ends in one line."""
    with (
        tempfile.TemporaryDirectory(prefix="visionsweep-browser-") as profile,
        replaced(pdf, suffix=".pdf") as printed,
    ):
        command = [
            browser,
            *BROWSER_FLAGS,
            f"--user-data-dir={profile}",
            f"--print-to-pdf={printed}",
            Path(page).resolve().as_uri(),
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=PDF_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise UserError(
                f"{browser} did not print {page} within {PDF_TIMEOUT_S} s; try --browser "
                "with another Chromium"
            ) from None
        if not printed.is_file() or printed.read_bytes()[:5] != b"%PDF-":
            said = [line for line in done.stderr.splitlines() if line.strip()]
            raise UserError(
                f"{browser} printed no PDF of {page} (exit {done.returncode}"
                + (f": {said[-1].strip()[:200]}" if said else "")
                + "); try --browser with another Chromium"
            )
    return pdf


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


def confusion_on_test(experiment: Experiment, trial: TrialPredictions) -> np.ndarray:
    """The trial's confusion matrix on the test split (rows: true class)."""
    predicted = trial.test_probs.argmax(1)
    return np.asarray(
        E.per_class_report(experiment.test_labels, predicted, experiment.class_names)["confusion"]
    )


def tensorboard_evaluation(experiment: Experiment, trial: TrialPredictions) -> Path:
    """The trial's test confusion matrix (image) and per-class precision-recall curves,
    written beside its training curves so TensorBoard shows them under the same run."""
    from torch.utils.tensorboard import SummaryWriter

    plt = pyplot()
    labels, matrix = experiment.test_labels, confusion_on_test(experiment, trial)
    trial_dir = experiment.trial_dir(trial.trial_id)
    for earlier in experiment.root.glob(f"*/events.out.tfevents.*{TB_SUFFIX}"):
        earlier.unlink()  # a report made again replaces its plots instead of adding more
    writer = SummaryWriter(log_dir=str(trial_dir), filename_suffix=TB_SUFFIX)
    fig = confusion_figure(matrix, experiment.class_names, f"{trial.variant}: test")
    writer.add_figure("test/confusion_matrix", fig, global_step=0, close=True)
    plt.close("all")
    for k, name in enumerate(experiment.class_names):
        writer.add_pr_curve(
            f"test/pr_curve/{name}", labels == k, trial.test_probs[:, k], global_step=0
        )
    writer.close()
    return trial_dir


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def build_report(
    experiment: Experiment,
    out: Path,
    compare: list[str] | None,
    confusion: int,
    latency_rounds: int = 5,
    latency_threads: int = 1,
    first: tuple[list, list[str]] = ((), ()),
    runtime: str = "torch",
) -> tuple[Path, list[str]]:
    """``first``: sections and lines that open the page (a cross-validated experiment's
    out-of-fold ranking)."""
    out.mkdir(parents=True, exist_ok=True)
    results = experiment.results()
    if results.empty:
        raise UserError(
            f"{experiment.root}: no trial gave a result (all failed or stuck at "
            "chance); nothing to report"
        )
    sections, lines = list(first[0]), list(first[1])
    if learning_curves(experiment, out / "learning_curves.png"):
        sections.append(("Learning curves", _image(out / "learning_curves.png")))

    group_key = _group_key(experiment)
    bars = accuracy_by_group(results, group_key)
    accuracy_chart(bars, out / "test_accuracy.png")
    sections.append(
        (
            "Test accuracy by " + (group_key or "variant") + " (trials that gave a result)",
            _image(out / "test_accuracy.png"),
        )
    )

    pair = tuple(compare) if compare else best_two(results)
    if pair:
        try:
            a, b = (load_trial(experiment, t) for t in pair)
        except UserError as error:
            if compare:  # named by the user: their pair or nothing
                raise
            lines.append(f"no McNemar test: {error}")
        else:
            test = E.mcnemar(experiment.test_labels, a.test_probs.argmax(1), b.test_probs.argmax(1))
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
        fig = confusion_figure(
            confusion_on_test(experiment, trial),
            experiment.class_names,
            f"{trial.variant} [{trial_id}]: test",
        )
        path = out / f"confusion_{trial_id}.png"
        fig.savefig(path, dpi=90)
        pyplot().close(fig)
        figures.append(_image(path))
    if figures:
        sections.append(("Confusion matrices of the best trials (test split)", "\n".join(figures)))
    if best_trial is not None:
        where = tensorboard_evaluation(experiment, best_trial)
        lines.append(
            f"TensorBoard: confusion matrix and PR curves of {best_trial.variant}"
            f"[{best_trial.trial_id}] in {where}"
        )
        sections.append(sections_of.calibration(experiment, best_trial, out, _image))

    sections.append(sections_of.settings(experiment, out, _image))
    section, note, costed = sections_of.costs(
        experiment, out, _image, latency_rounds, latency_threads, runtime
    )
    sections.append(section)
    lines.append(note)
    section, skipped = sections_of.failures(experiment, out, _image)
    sections.append(section)
    lines += skipped

    table = with_intervals(costed.drop(columns=["error"], errors="ignore"))
    page = _page(experiment, sections, table, lines)
    path = out / "report.html"
    write_atomic(path, page)
    return path, lines


def _group_key(experiment: Experiment) -> str | None:
    """The study's first variant key (e.g. the strategy), as the sweep recorded it."""
    keys = experiment.variant_keys
    return keys[0] if len(keys) >= 2 and keys[0] in experiment.table else None


def _page(experiment: Experiment, sections, table: pd.DataFrame, lines: list[str]) -> str:
    body = [
        f"<h1>{html.escape(experiment.root.name)}</h1>",
        f"<p>{len(experiment.table)} trials; test split of {len(experiment.test_labels)} "
        f"images in {len(experiment.class_names)} classes. Test metrics carry their 95% "
        "interval (accuracy: Wilson score; macro-F1: BCa bootstrap).</p>",
    ]
    if lines:
        body.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>")
    body.append("<h2>Ranked trials</h2>")
    body.append(
        table.to_html(
            index=False, classes="ranked", border=0, na_rep="", float_format=lambda v: f"{v:.4g}"
        )
    )
    for title, content in sections:
        body.append(f"<h2>{html.escape(title)}</h2>\n{content}")
    style = (
        "body{font-family:sans-serif;margin:2em;color:#222}"
        "table.ranked{border-collapse:collapse;font-size:13px}"
        "table.ranked td,table.ranked th{padding:3px 8px;border-bottom:1px solid #ddd}"
        "img{max-width:100%;margin:0.5em 0}"
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(experiment.root.name)}: report</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def typed(setting: str):
    """The argparse type of a numeric setting: its kind and range, as make_report checks."""
    kind, limits = NUMBERS[setting]
    return cli.number(kind, **limits)


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__, "python sweeps/report.py")
    parser.add_argument("experiment", metavar="EXPERIMENT_DIR")
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar="ID",
        help="McNemar's test between these two trials (default: the best trial "
        "and the best trial of another variant)",
    )
    parser.add_argument(
        "--confusion",
        type=typed("confusion"),
        default=2,
        help="confusion matrices for this many of the best trials (default 2)",
    )
    parser.add_argument("--out", help=f"folder of the report (default EXPERIMENT_DIR/{REPORT_DIR})")
    parser.add_argument(
        "--pdf",
        action="store_true",
        help=f"also print the report to {REPORT_PDF} with headless Chromium (see --browser)",
    )
    parser.add_argument(
        "--browser",
        metavar="PATH",
        help="the Chromium (or Chrome) that prints --pdf (default: the first of "
        + ", ".join(BROWSERS)
        + " on the PATH)",
    )
    parser.add_argument(
        "--fold",
        type=typed("fold"),
        help="a cross-validated experiment: the fold whose trials the "
        "per-trial sections show (default 0)",
    )
    parser.add_argument(
        "--latency-rounds",
        type=typed("latency_rounds"),
        default=5,
        help="interleaved rounds of the CPU latency measurement (0: none)",
    )
    parser.add_argument(
        "--latency-threads",
        type=typed("latency_threads"),
        default=1,
        help="CPU threads while latency is measured (default 1)",
    )
    parser.add_argument(  # its name before the trials' and the service's threads were told apart
        "--threads", type=typed("latency_threads"), dest="old_threads", help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="torch",
        help="where latency is measured: eager torch (default) or ONNX "
        "Runtime, as predict.py and serve.py run an export",
    )
    args = parser.parse_args(argv)
    make_report(
        args.experiment,
        compare=args.compare,
        confusion=args.confusion,
        out=args.out,
        pdf=args.pdf,
        browser=args.browser,
        fold=args.fold,
        latency_rounds=args.latency_rounds,
        latency_threads=args.latency_threads,
        threads=args.old_threads,
        runtime=args.runtime,
    )
    return 0


# each numeric setting of make_report: its kind and range (the parser's types, too)
NUMBERS = {
    "confusion": (int, {"low": 0}),
    "fold": (int, {"low": 0}),
    "latency_rounds": (int, {"low": 0}),
    "latency_threads": (int, {"low": 1}),
}
RUNTIMES = ("torch", "onnx")


def make_report(
    experiment_dir,
    compare: list[str] | None = None,
    confusion: int = 2,
    out=None,
    pdf: bool = False,
    browser: str | None = None,
    fold: int | None = None,
    latency_rounds: int = 5,
    latency_threads: int = 1,
    runtime: str = "torch",
    threads: int | None = None,
) -> Path:
    """The report of an experiment folder, as ``report.py`` writes it; returns report.html.
    The command line and the Python API (``Study.report``) both come here. ``threads``:
    ``latency_threads``'s old name, still read, with a FutureWarning."""
    if threads is not None:
        warnings.warn(
            "the report's threads setting is now latency_threads (--latency-threads; a "
            "trial's threads are the threads key); the old name is read for now",
            FutureWarning,
            stacklevel=2,
        )
        latency_threads = threads
    given = {"confusion": confusion, "fold": fold, "latency_rounds": latency_rounds}
    for name, value in {**given, "latency_threads": latency_threads}.items():
        kind, limits = NUMBERS[name]
        if value is not None and (problem := number_problem(value, kind, **limits)):
            raise UserError(f"`{name}`: {problem}")
    if runtime not in RUNTIMES:
        raise UserError(f"`runtime={runtime}`: use " + " or ".join(RUNTIMES))
    experiment = load_experiment(experiment_dir)
    for trial_id in compare or ():
        if trial_id not in set(experiment.table["trial_id"]):
            raise UserError(
                f"trial {trial_id}: not in {experiment.root}/results.csv; its "
                "trial_id column lists the trials"
            )
    out = Path(out) if out else experiment.root / REPORT_DIR
    check_out(out, experiment.data_root)
    if browser and not pdf:
        raise UserError("`browser` prints the PDF: add `pdf`, or drop `browser`")
    browser = find_browser(browser) if pdf else None  # before any work
    first: tuple[list, list[str]] = ([], [])
    if experiment.fold_count:
        first = _out_of_fold(experiment, out, fold or 0)
        experiment = experiment.for_fold(fold or 0)
    elif fold is not None:
        raise UserError(
            f"`fold={fold}`: {experiment.root} is not cross-validated (run.py --folds); drop `fold`"
        )
    path, lines = build_report(
        experiment, out, compare, confusion, latency_rounds, latency_threads, first, runtime
    )
    if browser is not None:
        lines.append(f"pdf: {print_pdf(path, path.parent / REPORT_PDF, browser)}")
    from sweeps.sinks.tracking import log_files

    tracked = log_files(
        experiment.root,
        sorted(path.parent.glob("*.html"))
        + sorted(path.parent.glob("*.png"))
        + ([path.parent / REPORT_PDF] if browser is not None else []),
        "report",
    )
    for line in [*lines, tracked] if tracked else lines:
        print(line)
    print(f"report: {path}")
    return path


def _out_of_fold(experiment: Experiment, out: Path, fold: int) -> tuple[list, list[str]]:
    """The out-of-fold ranking of a cross-validated experiment, over all images, as the
    report's first section; the per-trial sections after it show one fold (--fold)."""
    from sweeps.analysis.folds import out_of_fold, settle
    from sweeps.experiment.files import RANKING_PNG

    pooled, left_out = out_of_fold(experiment)
    out.mkdir(parents=True, exist_ok=True)
    settled = settle(pooled, experiment.class_names, out, left_out)
    parts = [f"<p><b>{html.escape(settled.line)}</b></p>"]
    if not settled.ranked.empty:
        parts += [
            settled.ranked.to_html(index=False, float_format="%.4f"),
            _image(out / RANKING_PNG),
        ]
    note = (
        f"the sections below show fold {fold} of {experiment.fold_count} (its trials, "
        "its test images); --fold picks another"
    )
    return [("Which variant is best, out of fold (every image tested once)", "\n".join(parts))], [
        settled.line,
        note,
        *left_out,
    ]


def check_out(out: Path, data_root: str) -> None:
    """The report's folder: not a file, and not inside the images the sweep trained on (its
    figures are PNG files: in a class folder they would be trained on next time)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"`out={out}`: is a file; name a folder for the report")
    if data_root and within(out, Path(data_root)):
        raise UserError(
            f"`out={out}`: lies inside the data folder {Path(data_root).resolve()}, "
            "where its images would be taken for training images; write the "
            "report elsewhere"
        )


def cli_main() -> None:
    cli.run(main)


if __name__ == "__main__":
    cli.as_process(cli_main)
