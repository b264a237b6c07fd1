"""The seal on Ray Tune's state files (sweeps/driver/seal.py) when its own write fails:
the sweep goes on, the failure is kept for the driver's resume line, and the next seal that
is written covers the versions the failed one missed."""

from __future__ import annotations

import errno
import os

import pytest

from sweeps.driver import seal
from sweeps.experiment.storage import Store
from trainables.core.errors import UserError


def test_a_seal_that_cannot_be_written_is_kept_as_failed_and_the_next_one_covers_it(
    tmp_path, monkeypatch
):
    monkeypatch.setenv(seal.KEY_ENV, "this user's key")
    (tmp_path / "runs" / "exp").mkdir(parents=True)
    store = Store(str(tmp_path / "runs"), "exp")
    experiment = tmp_path / "runs" / "exp"
    (experiment / seal.TUNER_PKL).write_bytes(b"first tuner")
    sealer = seal.Sealer(store)

    real = seal.replaced

    def full(path, **kwargs):  # the disk is full when the seal is written
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(seal, "replaced", full)
    sealer.seal_stored(seal.TUNER_PKL)  # never raises into Tune
    assert sealer.failed == os.strerror(errno.ENOSPC)
    assert not (experiment / seal.SEAL).exists()
    with pytest.raises(UserError, match="tuner.pkl is not sealed under your key"):
        seal.check_sealed(store)  # so run.py's resume line says --trust-state

    monkeypatch.setattr(seal, "replaced", real)  # space again
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "experiment_state-1.json").write_bytes(b"state")
    sealer.seal_staged(str(staging))
    assert sealer.failed is None
    (experiment / "experiment_state-1.json").write_bytes(b"state")  # Tune's copy arrives
    seal.check_sealed(store)  # the tuner.pkl the failed write missed is sealed too
