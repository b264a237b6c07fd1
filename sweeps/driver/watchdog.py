"""The stalled-trial watchdog: a running trial reports once per epoch; one that falls silent
(its worker stopped, a data read stuck, a GPU deadlocked) is not waited on forever.

Once a trial has been silent for three times its slowest epoch so far (at least a minute),
the driver warns, once per silence. After ``--stall-timeout`` seconds of silence the trial
is stopped: its worker is killed, Tune retries it from its last checkpoint like any lost
worker (``--max-failures``), and a trial whose last attempt stalled is tabled as
``stalled``. ``--stall-timeout 0`` turns the stop off (the warning stays).
"""

from __future__ import annotations

import sys
import time

from ray.tune import Callback

WARN_FLOOR_S = 60.0  # never warn about a silence shorter than this
WARN_FACTOR = 3.0  # ... or shorter than this many times the trial's slowest epoch
DEFAULT_STALL_TIMEOUT_S = 3600.0


class Watchdog(Callback):
    """``limit``: seconds of silence after which a running trial is stopped (0: never).
    ``warn_floor``: the shortest silence that is warned about."""

    def __init__(self, limit: float = DEFAULT_STALL_TIMEOUT_S, warn_floor: float = WARN_FLOOR_S):
        self.limit = limit
        self.warn_floor = warn_floor
        self.stalled: dict[str, str] = {}  # trial id -> why it was stopped (its last attempt)
        self._heard: dict[str, float] = {}  # running trial -> when it last reported (monotonic)
        self._slowest: dict[str, float] = {}  # trial -> its longest time between reports
        self._warned: set[str] = set()

    def __getstate__(self) -> dict:  # a resumed sweep starts its clocks anew
        # (``stalled`` is the very dict the recorder holds: pickled with it, it stays one)
        return {
            "limit": self.limit,
            "warn_floor": self.warn_floor,
            "stalled": self.stalled,
            "_heard": {},
            "_slowest": {},
            "_warned": set(),
        }

    def on_trial_result(self, iteration, trials, trial, result, **info):
        now = time.monotonic()
        began = self._heard.get(trial.trial_id)
        if began is not None:
            self._slowest[trial.trial_id] = max(self._slowest.get(trial.trial_id, 0.0), now - began)
        self._heard[trial.trial_id] = now
        self._warned.discard(trial.trial_id)
        self.stalled.pop(trial.trial_id, None)  # a retry that reports is not stalled

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        for trial in trials:
            tid = trial.trial_id
            if trial.status != "RUNNING":
                self._heard.pop(tid, None)  # the clock starts again when it runs again
                continue
            heard = self._heard.setdefault(tid, now)
            silent = now - heard
            if self.limit and silent >= self.limit:
                self._stop(trial, silent)
            elif silent >= self._warn_after(tid) and tid not in self._warned:
                self._warned.add(tid)
                stop = (
                    f"it is stopped as stalled after {self.limit:g} s of silence (--stall-timeout)"
                    if self.limit
                    else "--stall-timeout 0: it is not stopped"
                )
                seen = (
                    f"its slowest epoch so far: {self._slowest[tid]:.0f} s"
                    if tid in self._slowest
                    else "no epoch reported yet: a first epoch or a cache's build may be slow"
                )
                print(
                    f"warning: trial {tid} has reported nothing for {silent:.0f} s ({seen}); "
                    f"{stop}",
                    file=sys.stderr,
                    flush=True,
                )

    def _warn_after(self, tid: str) -> float:
        after = max(self.warn_floor, WARN_FACTOR * self._slowest.get(tid, 0.0))
        return min(after, self.limit / 2) if self.limit else after

    def _stop(self, trial, silent: float) -> None:
        import ray

        actor = trial.temporary_state.ray_actor
        self._heard.pop(trial.trial_id, None)
        if actor is None:
            return
        reason = (
            f"stalled: no report for {silent:.0f} s (--stall-timeout "
            f"{self.limit:g}); its worker was stopped"
        )
        self.stalled[trial.trial_id] = reason
        print(f"warning: trial {trial.trial_id} {reason}", file=sys.stderr, flush=True)
        ray.kill(actor, no_restart=True)
