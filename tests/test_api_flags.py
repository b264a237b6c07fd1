"""What the Python API hands the command line's parser: every option, 0 included, and a
resume. run.execute is replaced by a recorder, so no sweep runs."""

from __future__ import annotations

import pytest

from sweeps import StudyError, api, run_study


@pytest.fixture
def executed(monkeypatch):
    from sweeps import run

    seen = []
    monkeypatch.setattr(run, "execute", lambda args, argv: seen.append(args) or 0)
    monkeypatch.setattr(run, "stop_ray", lambda: None)
    return seen


def test_options_equal_to_zero_reach_the_parser(executed, tmp_path):
    run_study("single", storage=tmp_path, name="n", max_failures=0, stall_timeout=0)
    args = executed[0]
    assert (args.max_failures, args.stall_timeout) == (0, 0)  # not the defaults (3, 3600)
    # folds=0 is checked as --folds 0 is, not dropped into a sweep without folds
    with pytest.raises(StudyError, match="folds: must be at least 3, got 0"):
        run_study("single", storage=tmp_path, name="m", folds=0)
    assert api._flags({"latency_rounds": 0, "overwrite": False, "out": None}) == [
        "--latency-rounds",
        "0",
    ]


def test_run_study_resumes_a_study_by_its_folder(executed, tmp_path):
    study = run_study(resume=tmp_path / "runs" / "old", retry_errored=True)
    assert str(executed[0].resume) == str(tmp_path / "runs" / "old")
    assert executed[0].retry_errored is True and study.root == tmp_path / "runs" / "old"
    with pytest.raises(StudyError, match="continues a study as it was"):
        run_study("single", resume=tmp_path / "runs" / "old")
    with pytest.raises(StudyError, match="needs a space"):
        run_study()
