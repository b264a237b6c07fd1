"""Every file name of an experiment folder, in one place. What a trial writes inside its
checkpoints (state.pt, best_model.pt, predictions.npz, trial.json, ...) belongs to the
trial record: trainables/trial/checkpoint.py.

    runs/NAME/
      sweep.json               the sweep's settings and data digest (--resume reads it)
      split.csv                every image: path, class, label, split (or "skipped")
      data_report.json         counts per class and split, skipped images, copies
      results.csv, results.md  one row per trial
      results_by_variant.csv   mean and std per variant (--num-samples > 1)
      best_config.json         a search's best configuration
      optuna.journal           a search's Optuna study
      tracking.json            the MLflow runs this experiment logged to
      ensembles.csv, .md       ensemble.py's table
      results_oof.csv          a cross-validated experiment (--folds): each variant's
                               out-of-fold scores over all images, with intervals
      pairs.csv, verdict.md    its pairwise tests (McNemar, Holm) and the verdict line
      ranking.png              the ranking with intervals, unseparated pairs joined
      confirm.json             confirm.py's folder: what it confirmed, from where
      report/                  report.py's default output folder (report.html, costs.csv,
                               the figures); report.py writes nothing else
      .visionsweep             the claim marker; .visionsweep.lock its lock
      <trial folder>/progress.csv  one row per reported epoch
"""

SWEEP_JSON = "sweep.json"
SPLIT_CSV = "split.csv"
DATA_REPORT = "data_report.json"
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
BY_VARIANT_CSV = "results_by_variant.csv"
BEST_CONFIG = "best_config.json"
OPTUNA_JOURNAL = "optuna.journal"
TRACKING_FILE = "tracking.json"
ENSEMBLES_CSV = "ensembles.csv"
ENSEMBLES_MD = "ensembles.md"
REPORT_DIR = "report"
COSTS_CSV = "costs.csv"  # in the report's folder: the table with measured latency
MARKER = ".visionsweep"
CLAIM_LOCK = ".visionsweep.lock"
PROGRESS_CSV = "progress.csv"
OOF_CSV = "results_oof.csv"
PAIRS_CSV = "pairs.csv"
VERDICT_MD = "verdict.md"
RANKING_PNG = "ranking.png"
CONFIRM_JSON = "confirm.json"

# what a tracked sweep uploads to MLflow as the run's artifacts
ARTIFACTS = (
    RESULTS_CSV,
    RESULTS_MD,
    BY_VARIANT_CSV,
    BEST_CONFIG,
    SWEEP_JSON,
    DATA_REPORT,
    SPLIT_CSV,
)
