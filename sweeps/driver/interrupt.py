"""Ctrl-C and SIGTERM end a sweep the way Ray Tune ends one on its own stop signal: the
experiment state is saved with the running trials unfinished (so ``--resume`` goes on with
them), the trials are stopped, and the driver writes the table and says how to resume.
A second signal quits at once."""

from __future__ import annotations

import logging
import os
import signal
import sys

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class _TunesStopLines(logging.Filter):
    """Tune's own lines on a stop, which the driver's say for this sweep: "Stop signal
    received ..., ending Ray Tune run ... Press CTRL+C ... to skip" (the driver has said
    that the sweep stops and how to quit at once) and "Resume experiment with:
    Tuner.restore(...)" (the driver says how to resume this sweep, python sweeps/run.py
    --resume ...; Tune's way would lose its settings)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return "Tuner.restore(" not in text and not text.startswith("Stop signal received")


_TUNES_STOP_LINES = _TunesStopLines()  # one instance: adding it again changes nothing


class GracefulStop:
    """Within ``with GracefulStop() as stop:`` the first SIGINT or SIGTERM asks Tune to stop
    (through SIGUSR1, its own stop signal); ``stop.signal`` says which one came."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> GracefulStop:
        # Tune would otherwise take SIGINT for itself, and we could not tell it came
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        logging.getLogger("ray.tune.tune").addFilter(_TUNES_STOP_LINES)
        for signum in EXIT_CODES:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        tune_listens = signal.getsignal(signal.SIGUSR1) not in (
            signal.SIG_DFL,
            signal.SIG_IGN,
            None,
        )
        if self.signal is not None or not tune_listens:
            raise KeyboardInterrupt  # a second signal, or one before the trials: quit now
        self.signal = signum
        print(
            f"\n{signal.Signals(signum).name}: stopping the sweep; unfinished trials keep "
            "their checkpoints (press Ctrl-C again to quit at once)",
            file=sys.stderr,
            flush=True,
        )
        os.kill(os.getpid(), signal.SIGUSR1)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signal, 130)
