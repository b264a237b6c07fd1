"""What the Python API hands the sweep: every setting, 0 included, and a resume.
run.study is replaced by a recorder, so no sweep runs."""

from __future__ import annotations

import pytest

from sweeps import StudyError, api, run_study


@pytest.fixture
def executed(monkeypatch):
    from sweeps import run

    seen = []
    monkeypatch.setattr(run, "study", lambda spec, command: seen.append(spec) or 0)
    monkeypatch.setattr(run, "stop_ray", lambda: None)
    return seen


def test_options_equal_to_zero_reach_the_parser(executed, tmp_path, monkeypatch):
    from sweeps import report

    run_study("single", storage=tmp_path, name="n", max_failures=0, stall_timeout=0)
    args = executed[0]
    assert (args.max_failures, args.stall_timeout) == (0, 0)  # not the defaults (3, 3600)
    # folds=0 is checked as --folds 0 is, not dropped into a sweep without folds
    with pytest.raises(StudyError, match="folds: must be at least 3, got 0"):
        run_study("single", storage=tmp_path, name="m", folds=0)
    asked = []
    monkeypatch.setattr(report, "make_report", lambda root, **kw: asked.append(kw) or root)
    api.Study(tmp_path, 0).report(latency_rounds=0, confusion=0, out=None)
    assert asked == [{"latency_rounds": 0, "confusion": 0, "out": None}]


def test_run_study_resumes_a_study_by_its_folder(executed, tmp_path):
    study = run_study(resume=tmp_path / "runs" / "old", retry_errored=True)
    assert str(executed[0].resume) == str(tmp_path / "runs" / "old")
    assert executed[0].retry_errored is True and study.root == tmp_path / "runs" / "old"
    with pytest.raises(StudyError, match="continues a study as it was"):
        run_study("single", resume=tmp_path / "runs" / "old")
    with pytest.raises(StudyError, match="needs a space"):
        run_study()


def test_settings_are_typed_and_named_as_the_api_takes_them(executed, tmp_path):
    run_study("single", storage=tmp_path, name="n", overrides={"lr": [0.1, 0.01], "seed": 3})
    spec = executed[0]
    assert spec.overrides == {"lr": [0.1, 0.01], "seed": 3} and spec.scheduler == "asha"
    run_study("single", storage=tmp_path, name="f", folds=5)
    assert executed[1].scheduler == "fifo"  # cross-validation runs every fold to its end
    for settings, needle in (
        ({"bogus": 1}, "unknown setting 'bogus'"),
        ({"max_epoch": 1}, "did you mean max_epochs?"),
        ({"folds": 2.5}, "folds: expected an integer, got 2.5"),
        ({"niceness": 20}, "niceness: must be at most 19, got 20"),
        ({"scheduler": "hyperband"}, "scheduler=hyperband: not a scheduler; use asha or fifo"),
        ({"folds": 5, "scheduler": "asha"}, "drop scheduler=asha"),
    ):
        with pytest.raises(StudyError) as raised:
            run_study("single", storage=tmp_path, name="x", **settings)
        assert needle in str(raised.value) and "--" not in str(raised.value), raised.value
    assert len(executed) == 2


def test_a_mistake_names_the_setting_in_python_and_the_flag_on_the_command_line(tmp_path):
    from sweeps.cli import as_flags

    with pytest.raises(StudyError) as raised:  # checked before anything is written
        run_study("single", storage=tmp_path, name="n", split_file="a.csv", split_seed=1)
    assert str(raised.value).startswith("split_file and split_seed conflict")
    assert as_flags(raised.value.marked).startswith("--split-file and --split-seed conflict")
    with pytest.raises(StudyError) as raised:
        run_study("single", storage=tmp_path, name="n", overrides={"seed": [1, 2]})
    assert str(raised.value) == "bad seed=[1,2]: use num_samples for seeds"
    assert as_flags(raised.value.marked) == "bad --set seed=[1,2]: use --num-samples for seeds"
    assert not (tmp_path / "n").exists()
    assert as_flags("`max_epochs=3`, `lr=0.1`, `data=DIR`, `overrides`, `ray get`") == (
        "--max-epochs 3, --set lr=0.1, --data DIR, --set, `ray get`"
    )


def test_the_report_and_the_service_name_their_threads_apart_and_read_the_old_name(
    tmp_path, monkeypatch
):
    """A trial's ``threads`` key, the report's latency threads and the service's model
    threads were all "threads"; the two commands' own now say which, and their old flag
    (and the report's old keyword) still work, the keyword with a FutureWarning."""
    from sweeps import report, serve

    made = []
    monkeypatch.setattr(report, "make_report", lambda root, **kw: made.append(kw) or root)
    report.main([str(tmp_path), "--latency-threads", "3"])
    report.main([str(tmp_path), "--threads", "2"])
    assert [(m["latency_threads"], m["threads"]) for m in made] == [(3, None), (1, 2)]
    from trainables.core.errors import UserError

    with pytest.raises(UserError, match="--latency-threads: must be at least 1, got 0"):
        report.main([str(tmp_path), "--latency-threads", "0"])  # checked as before
    monkeypatch.undo()
    with pytest.warns(FutureWarning, match="now latency_threads"):
        with pytest.raises(UserError, match="latency_threads: must be at least 1, got 0"):
            report.make_report(tmp_path, threads=0)  # the old keyword reaches the check
    parser = serve.get_args_parser()
    assert parser.parse_args(["EXPORT", "--model-threads", "2"]).model_threads == 2
    assert parser.parse_args(["EXPORT", "--threads", "4"]).model_threads == 4
