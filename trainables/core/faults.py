"""Faults on cue, for the tests: what a full disk, a lost worker or a killed driver does to a
sweep, at a chosen moment instead of a moment found by polling. Off unless the environment
variable VISIONSWEEP_FAULTS, read by the driver, names some:

    disk_full_after=N      the driver's N+1-th file write fails with ENOSPC, and every later one
    kill_worker_at_epoch=N a trial's worker kills itself (SIGKILL) right after reporting
                           epoch N, on its first attempt only
    stall_worker_at_epoch=N
                           a trial's worker stops itself (SIGSTOP) right after reporting
                           epoch N, on its first attempt only
    fail_seed=N            the trial of seed N raises an exception before it starts training
    hog_memory_at_epoch=N  a trial's worker allocates memory until it is killed, right
                           after reporting epoch N, on its first attempt only
    kill_driver_after=N    the driver kills itself (SIGKILL) at the first epoch report after
                           N trials have finished
    interrupt_driver_after=N, terminate_driver_after=N
                           the same moment, with SIGINT (Ctrl-C) or SIGTERM instead
    terminate_group_after=N
                           the same moment, SIGTERM to the driver's whole process group (as
                           `timeout`, systemd and batch schedulers stop a job)

They reach the product at three points, set up by the driver and inert when none is asked
for: ``TrialFaults`` goes to every trial with its data (the trainable wraps its
per-epoch report in it once, so a cluster's workers get it without inheriting the driver's
environment), and the driver's are one more Tune callback beside the recorder, added only
then (``sweeps/driver/faults.py``). The full disk is ``before_write``, which each write of
the driver calls first (the write-beside-then-rename helper ``files.replaced`` takes it as
its ``before``).
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

from trainables.core import metrics as M

ENV = "VISIONSWEEP_FAULTS"
_writes = [0]


def fault(name: str) -> int | None:
    """The value of fault ``name``, if VISIONSWEEP_FAULTS sets it."""
    for item in os.environ.get(ENV, "").split(","):
        key, _, value = item.partition("=")
        if key.strip() == name:
            return int(value)
    return None


def before_write(path) -> None:
    """Called before each file write of the driver: a full disk, when asked for."""
    limit = fault("disk_full_after")
    if limit is None:
        return
    _writes[0] += 1
    if _writes[0] > limit:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


DRIVER_SIGNALS = {
    "kill_driver_after": signal.SIGKILL,
    "interrupt_driver_after": signal.SIGINT,
    "terminate_driver_after": signal.SIGTERM,
    "terminate_group_after": signal.SIGTERM,
}
GROUP_SIGNALS = {"terminate_group_after"}


def asked() -> bool:
    """Whether VISIONSWEEP_FAULTS names any fault."""
    return bool(os.environ.get(ENV, "").strip())


@dataclass(frozen=True)
class TrialFaults:
    """A trial's faults, read from the driver's environment when the sweep is built. The
    default asks for none, and then both methods hand back what they were given."""

    fail_seed: int | None = None
    kill_at: int | None = None
    stall_at: int | None = None
    hog_at: int | None = None

    @classmethod
    def from_environment(cls) -> TrialFaults:
        return cls(
            fault("fail_seed"),
            fault("kill_worker_at_epoch"),
            fault("stall_worker_at_epoch"),
            fault("hog_memory_at_epoch"),
        )

    def at_start(self, seed: int) -> None:
        """Before the trial starts training: the failing trial."""
        if self.fail_seed is not None and self.fail_seed == seed:
            raise RuntimeError(f"a failure on cue for the tests (fail_seed={seed})")

    def around(
        self, report: Callable[[dict, dict], None], first_attempt: bool
    ) -> Callable[[dict, dict], None]:
        """The trial's per-epoch ``report``, followed on the trial's first attempt by the
        lost, stalled or memory-hungry worker at its epoch."""
        cues = ((self.kill_at, die), (self.stall_at, stall), (self.hog_at, hog_memory))
        at = {epoch: act for epoch, act in cues if epoch is not None}
        if not first_attempt or not at:
            return report

        def reported(metrics: dict, state: dict) -> None:
            report(metrics, state)
            act = at.get(metrics[M.EPOCH])
            if act is not None:
                act()

        return reported


NO_FAULTS = TrialFaults()


def hog_memory() -> None:
    """Take memory, 64 MB at a time and touched, until the system kills this process. It
    first marks itself the kernel's first choice (oom_score_adj 1000): otherwise, on a
    loaded machine, the kernel may pick another process of the sweep (once it picked the
    driver), and the test meant to see a trial killed saw the whole sweep die."""
    try:
        with open("/proc/self/oom_score_adj", "w") as adj:
            adj.write("1000")
    except OSError:
        pass  # not Linux, or not allowed: the kernel chooses by size alone
    held = []
    while True:
        held.append(bytearray(64 << 20))
        for page in range(0, len(held[-1]), 4096):
            held[-1][page] = 1


def die(signum: int = signal.SIGKILL, group: bool = False) -> None:
    if group:
        os.killpg(os.getpgrp(), signum)
    else:
        os.kill(os.getpid(), signum)


def stall() -> None:
    die(signal.SIGSTOP)
