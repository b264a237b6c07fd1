"""Out-of-memory kills the driver can see: the kernel's count of them in this process's
memory cgroup (cgroup v2 ``memory.events``, v1 ``memory.oom_control``), which holds a local
sweep's Ray workers too, and Ray's own memory monitor's message. A trial whose worker
died is tabled as ``oom``, not ``error``, when one of them says memory killed it."""

from __future__ import annotations

from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
RAY_OOM_WORDS = ("OutOfMemoryError", "running low on memory", "memory pressure")
WORKER_DIED_WORDS = (
    "ActorDiedError",
    "RayActorError",
    "WorkerCrashedError",
    "died unexpectedly",
    "worker process has died",
    "SIGKILL",
)
KILLED_HINT = (
    "killed for lack of memory (the {who}): use a smaller batch_size or "
    "image_size, or fewer trials at once (--max-concurrent)"
)


def kernel_oom_kills(
    proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = CGROUP_ROOT
) -> int | None:
    """How many processes the kernel has killed for memory in this process's cgroup, or
    None where that cannot be read (no cgroup memory controller, another system)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if controllers == "":  # v2: one unified hierarchy
            found = _count(root / relative / "memory.events", "oom_kill")
        elif "memory" in controllers.split(","):  # v1: the memory hierarchy
            found = _count(root / "memory" / relative / "memory.oom_control", "oom_kill")
        else:
            continue
        if found is not None:
            return found
    return None


def _count(path: Path, key: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def killed_for_memory(error: str, kills_before: int | None) -> str | None:
    """The oom message for a trial that ended with ``error``, if memory killed it: Ray's
    memory monitor said so, or its worker died while the kernel's count went up."""
    if any(word in error for word in RAY_OOM_WORDS):
        return KILLED_HINT.format(who="node ran low on memory; Ray's memory monitor")
    if kills_before is None or not any(word in error for word in WORKER_DIED_WORDS):
        return None
    now = kernel_oom_kills()
    if now is not None and now > kills_before:
        return KILLED_HINT.format(who="kernel's out-of-memory killer")
    return None
