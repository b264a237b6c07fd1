"""Faults on cue, for the tests: what a full disk, a lost worker or a killed driver does to a
sweep, at a chosen moment instead of a moment found by polling. Off unless the environment
variable VISIONSWEEP_FAULTS names some (trial workers inherit it from the driver):

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
"""

from __future__ import annotations

import errno
import os
import signal

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
