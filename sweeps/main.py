"""visionsweep: every command of the tool under one name.

    visionsweep run --space googlenet_strategies [...]   a study (sweeps/run.py)
    visionsweep confirm runs/NAME [...]                  cross-validate its best variants
    visionsweep report runs/NAME                         the HTML report
    visionsweep ensemble runs/NAME                       ensembles of its best trials
    visionsweep export runs/NAME [--trial ID]            an export folder of one trial
    visionsweep predict EXPORT_DIR IMAGES_DIR            predictions of an export
    visionsweep serve EXPORT_DIR                         the REST service of an export
    visionsweep weights add|list ...                     pretrained weights files

``visionsweep COMMAND --help`` shows a command's flags; ``python sweeps/COMMAND.py`` is the
same command. ``visionsweep --space ...`` (flags first, no command) is ``visionsweep run``.
"""

from __future__ import annotations

import importlib
import os
import sys

from trainables.core.registry import did_you_mean

# each command's module (imported only when it is run: --help pays for no torch)
COMMANDS = {
    name: f"sweeps.{name}"
    for name in ("run", "confirm", "report", "ensemble", "export", "predict", "serve", "weights")
}


def cli_main(argv: list[str] | None = None) -> None:
    try:
        _dispatch(argv)
    except BrokenPipeError:  # the reader went away (visionsweep --help | head): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # as Python's docs say
        raise SystemExit(1) from None


def _dispatch(argv: list[str] | None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        sys.stdout.flush()  # a closed pipe is found here, not at the interpreter's exit
        raise SystemExit(0)
    if not argv or argv[0].startswith("-"):
        name = "run"  # the console script's first form: run.py's flags
    else:
        name, argv = argv[0], argv[1:]
    if name not in COMMANDS:
        print(
            f"error: unknown command {name!r}{did_you_mean(name, COMMANDS)}: "
            f"choose one of {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    module = importlib.import_module(COMMANDS[name])
    sys.argv = [f"visionsweep {name}", *argv]
    module.cli_main()


def process_main() -> None:
    """The console script: ``cli_main`` as this whole process (cli.as_process)."""
    from sweeps.cli import as_process

    as_process(cli_main)


if __name__ == "__main__":
    process_main()
