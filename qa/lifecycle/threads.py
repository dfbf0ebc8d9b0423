"""How many CPU threads each rank uses: its share of the cores this process may run on, unless the user said.

Launchers set ``OMP_NUM_THREADS`` for their workers whatever the machine: torch.distributed.run (torchrun, and
``accelerate launch`` of several processes, which runs it in-process) sets 1 when the variable is unset and
``--nproc_per_node`` > 1; ``accelerate launch`` sets ``--num_cpu_threads_per_process``, which defaults to the
variable or 1. So on a 16-core workstation 2 CPU ranks would use 2 cores. A worker cannot tell the launcher's
value from the user's by its own environment, but both launchers change only the environment they pass on: the
launcher process's own start-up environment (``/proc/<ppid>/environ``) still holds what the user gave it.

Runs in :func:`qa.lifecycle.startup.prepare_process`, before torch is imported (torch reads the variable once, when
it starts its thread pool).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass

VAR = "OMP_NUM_THREADS"


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str

    def describe(self) -> str:
        return f"{self.threads} CPU thread{'s' if self.threads != 1 else ''} per rank ({self.reason})"


def _positive_int(value: str | None) -> int | None:
    try:
        n = int(value) if value is not None else 0
    except ValueError:
        return None
    return n if n > 0 else None


def choose_threads(*, cores: int, local_world_size: int, user_value: str | None) -> ThreadChoice:
    """The rule: the user's ``OMP_NUM_THREADS`` when it is a positive integer, else cores // local ranks (>= 1)."""
    user = _positive_int(user_value)
    if user is not None:
        return ThreadChoice(user, f"{VAR}={user} from the user")
    ranks = max(local_world_size, 1)
    share = max(cores // ranks, 1)
    return ThreadChoice(share, f"{cores} core{'s' if cores != 1 else ''} available / {ranks} rank"
                               f"{'s' if ranks != 1 else ''} on this node")


def user_thread_setting(env: Mapping[str, str], launched: bool, launcher_env: Mapping[str, str] | None,
                        launcher_argv: Sequence[str] | None = None) -> str | None:
    """The user's ``OMP_NUM_THREADS``, or None when the user gave none.

    Not launched: our own. Launched: the launcher's start-up value; ours when the launcher was given
    ``--num_cpu_threads_per_process`` (accelerate exports that); where the launcher's environment cannot be read,
    ours unless it is 1, the launchers' default.
    """
    if not launched:
        return env.get(VAR)
    if launcher_argv is not None and any(a.startswith("--num_cpu_threads_per_process") for a in launcher_argv):
        return env.get(VAR)
    if launcher_env is None:
        own = env.get(VAR)
        return own if _positive_int(own) not in (None, 1) else None
    return launcher_env.get(VAR)


def launcher_environment(pid: int) -> dict[str, str] | None:
    """The environment process ``pid`` was started with, or None where it cannot be read (not Linux, other user)."""
    try:
        raw = open(f"/proc/{pid}/environ", "rb").read()  # noqa: SIM115 - one read
    except OSError:
        return None
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def cores_available() -> int:
    """CPUs this process may run on (its affinity mask: taskset, cgroups cpusets, Slurm), not all the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def set_threads(env: MutableMapping[str, str], launched: bool) -> ThreadChoice:
    """Decide this rank's thread count and export it as ``OMP_NUM_THREADS`` (before torch is imported)."""
    from qa.lifecycle.watchdog import parent_argv

    local = _positive_int(env.get("LOCAL_WORLD_SIZE")) or 1
    ppid = os.getppid()
    user = user_thread_setting(env, launched, launcher_environment(ppid) if launched else None,
                               parent_argv(ppid) if launched else None)
    choice = choose_threads(cores=cores_available(), local_world_size=local, user_value=user)
    env[VAR] = str(choice.threads)
    return choice
