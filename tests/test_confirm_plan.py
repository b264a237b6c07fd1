"""confirm.py's plan, before any training: what it refuses and which candidates it takes,
on hand-made experiment folders."""

from __future__ import annotations

import fcntl

import pytest

from helpers import A, B, C, write_experiment
from sweeps import confirm
from sweeps.experiment.files import CLAIM_LOCK
from sweeps.experiment.folder import load_experiment
from trainables.core.errors import UserError


def test_a_sweep_still_running_is_not_confirmed(tmp_path):
    root = write_experiment(tmp_path / "exp", {"1": (0.2, A, A), "2": (0.3, B, B)})
    with open(root / CLAIM_LOCK, "a+") as held:  # as the running sweep's driver holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UserError, match="in use by a running sweep; wait for it to end"):
            confirm.main([str(root)])
    assert not (tmp_path / "exp-confirm").exists()


def test_a_searched_study_confirms_its_best_trials_and_one_candidate_is_refused(tmp_path):
    root = write_experiment(
        tmp_path / "exp", {"1": (0.2, A, A), "2": (0.1, B, B), "3": (0.3, C, C)}
    )
    experiment = load_experiment(root)
    assert confirm.top_variants(experiment, 2, searched=True) == [("v2[2]", "2"), ("v1[1]", "1")]
    one = write_experiment(tmp_path / "one", {"1": (0.2, A, A)})
    with pytest.raises(UserError, match="only one variant gave a result"):
        confirm.top_variants(load_experiment(one), 3, searched=False)
