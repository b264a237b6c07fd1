"""A local Ray instance never outlives the driver that started it, however the driver ends.

Ray ties the processes it starts directly to the driver (they die with it), but not the
agents its raylet starts: killed with SIGKILL, a driver left them running, holding memory
and, on a GPU node, GPU memory. So the driver starts this watchdog in a session of its own:
while the driver lives it remembers the driver's descendant processes, and once the driver
is gone it stops any of them still running (SIGTERM, then SIGKILL). A driver that ends
normally has shut Ray down itself, and the watchdog finds nothing left to do.

Standalone on purpose (the standard library only; started as a script): Linux's /proc.

    python sweeps/driver/reaper.py DRIVER_PID
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.5
GRACE_S = 5.0  # a driver's own shutdown of Ray comes first


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process, from /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after the command name, which may hold ')'
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """Every live descendant of ``root``: pid -> start time."""
    children: dict[int, list[int]] = {}
    started: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = _stat(int(entry.name))
            if info:
                children.setdefault(info[0], []).append(int(entry.name))
                started[int(entry.name)] = info[1]
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found[child] = started[child]
                todo.append(child)
    return found


def _alive(pid: int, started: int) -> bool:
    info = _stat(pid)
    return info is not None and info[1] == started  # the same process, not a reused pid


def watch(driver: int) -> None:
    me = os.getpid()
    known: dict[int, int] = {}
    driver_started = (_stat(driver) or (0, 0))[1]
    while _alive(driver, driver_started):
        known.update({p: t for p, t in descendants(driver).items() if p != me})
        time.sleep(POLL_S)
    time.sleep(GRACE_S)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = [p for p, t in known.items() if _alive(p, t)]
        for pid in left:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        if not left:
            return
        time.sleep(3.0)


_WATCHED: set[int] = set()  # drivers this process has started a watchdog for


def start(driver: int | None = None) -> None:
    """Start the watchdog for this process (where /proc exists: Linux), once per driver: a
    notebook that runs several studies in one kernel gets one watchdog."""
    driver = driver or os.getpid()
    if not Path("/proc/self/stat").exists() or driver in _WATCHED:
        return
    _WATCHED.add(driver)
    subprocess.Popen(
        [sys.executable, __file__, str(driver)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


if __name__ == "__main__":
    watch(int(sys.argv[1]))
