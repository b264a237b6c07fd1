"""The Python API as a notebook uses it: in-process, twice in one interpreter, Ray started
and shut down each time; a user's mistake raises the one exception type."""

from __future__ import annotations

import pandas as pd
import pytest

from helpers import make_image_folder

pytestmark = pytest.mark.integration


def test_a_notebook_runs_two_studies_in_one_interpreter(tmp_path, capsys):
    import ray

    from sweeps import StudyError, run_study

    images = make_image_folder(tmp_path / "images", per_class=8)
    studies = []
    for seed in (0, 1):
        study = run_study(
            "single",
            data=images,
            smoke=True,
            storage=tmp_path / "runs",
            name=f"nb{seed}",
            overrides={"model": "small_cnn", "seed": seed},
            max_epochs=1,
        )
        assert not ray.is_initialized()  # shut down as the study ended
        studies.append(study)
    out = capsys.readouterr().out
    assert out.count("finished:") == 2  # the progress lines, one per trial
    for seed, study in enumerate(studies):
        assert study.exit_code == 0 and study.root == tmp_path / "runs" / f"nb{seed}"
        table = study.table
        assert isinstance(table, pd.DataFrame) and len(table) == 1
        assert table["test_acc"].between(0, 1).all() and table["status"].iloc[0] == "TERMINATED"
    page = studies[0].report(latency_rounds=0)
    assert page.name == "report.html" and page.stat().st_size > 1000
    export = studies[1].export()
    assert (export / "spec.json").exists()

    with pytest.raises(StudyError, match="unknown config key 'lrr'"):
        run_study(
            "single",
            data=images,
            smoke=True,
            storage=tmp_path / "runs",
            name="bad",
            overrides={"lrr": 0.1},
        )
    assert not (tmp_path / "runs" / "bad").exists() and not ray.is_initialized()
