"""The visionsweep console script: one name, a subcommand per command, each the same code as
python sweeps/COMMAND.py; flags first (no subcommand) is run, as the script first was."""

from __future__ import annotations

import pytest

from sweeps import main


def _ran(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ended:
        main.cli_main(argv)
    out = capsys.readouterr()
    return ended.value.code, out.out, out.err


def test_each_subcommand_is_its_command(capsys):
    code, _, err = _ran(["weights", "list", "--model", "resnet19"], capsys)
    assert code == 2 and err.strip().splitlines() == [
        line for line in err.strip().splitlines() if "unknown model 'resnet19'" in line
    ]
    code, out, _ = _ran(["run", "--list-spaces"], capsys)
    assert code == 0 and "googlenet_strategies" in out
    code, out, _ = _ran(["--list-spaces"], capsys)  # flags first: run
    assert code == 0 and "googlenet_strategies" in out
    code, out, _ = _ran(["export", "--help"], capsys)
    assert code == 0 and "--out" in out


def test_an_unknown_subcommand_is_one_line_with_the_nearest(capsys):
    code, _, err = _ran(["wieghts", "list"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "unknown command 'wieghts' (did you mean 'weights'?)" in err
    code, out, _ = _ran(["--help"], capsys)
    assert code == 0 and "visionsweep confirm" in out


def test_a_reader_that_goes_away_ends_it_without_a_traceback():
    import subprocess
    import sys

    reader = subprocess.Popen(  # visionsweep --help | head -0
        [sys.executable, "-c", "from sweeps.main import cli_main; cli_main(['--help'])"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    reader.stdout.close()  # the reader is gone before a byte is read
    _, err = reader.communicate(timeout=60)
    assert reader.returncode == 1 and b"Traceback" not in err and b"BrokenPipe" not in err
