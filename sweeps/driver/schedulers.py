"""Tune's schedulers as a sweep uses them: each also sees every trial as Tune adds it, the
one moment to point a resumed copy's new trials into that copy (see
recorder.into_this_experiment), and Tune's searcher, which the recorder tells of a trial
that Tune ended without telling it (recorder._ended_unannounced)."""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from sweeps.driver.recorder import into_this_experiment, know_searcher


class Asha(ASHAScheduler):
    def on_trial_add(self, tune_controller, trial):
        into_this_experiment(trial)
        know_searcher(tune_controller.search_alg)
        super().on_trial_add(tune_controller, trial)


class Fifo(FIFOScheduler):
    def on_trial_add(self, tune_controller, trial):
        into_this_experiment(trial)
        know_searcher(tune_controller.search_alg)
        super().on_trial_add(tune_controller, trial)
