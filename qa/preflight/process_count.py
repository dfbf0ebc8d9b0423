"""``accelerate launch --num_processes 2 train.py`` on a machine without GPUs starts ONE process: refuse it.

Without ``--use_deepspeed``, ``--multi_gpu`` or an accelerate config that sets them, ``accelerate launch`` uses its
simple launcher, which runs the script once whatever ``--num_processes`` says (on a CPU machine nothing turns
``--multi_gpu`` on by itself). The run would look healthy and train with a quarter or an eighth of the planned
batch. What the simple launcher leaves in the environment (accelerate 1.15,
``accelerate/utils/launch.py: prepare_simple_launcher_cmd_env``): ``ACCELERATE_USE_CPU`` always, and
``MASTER_ADDR``/``MASTER_PORT`` only when more than one process or machine was asked for; torchrun's agent,
which every multi-process launcher goes through, sets ``TORCHELASTIC_RUN_ID`` and ``WORLD_SIZE`` instead. The
launcher's own command line (``/proc/<parent>/cmdline`` on Linux) says how many were asked for.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

from qa.config import Config
from qa.errors import ConfigError

_MPI_SIZES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")  # accelerate's mpirun path


def _option(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def requested_processes(env: Mapping[str, str], launcher_argv: Sequence[str] | None) -> int | None:
    """How many processes the simple launcher was asked for, when it is what started us and that is > 1."""
    if "ACCELERATE_USE_CPU" not in env or "TORCHELASTIC_RUN_ID" in env or "WORLD_SIZE" in env:
        return None
    if any(k in env for k in _MPI_SIZES):
        return None
    if launcher_argv is not None and any("accelerate" in a for a in launcher_argv[:3]):
        value = _option(launcher_argv, "--num_processes")
        if value is not None:
            return int(value) if value.isdigit() and int(value) > 1 else None
    # No count on the command line (an accelerate config file gave it): the rendezvous variables that the
    # simple launcher sets only for more than one process say it.
    return 0 if "MASTER_ADDR" in env and "MASTER_PORT" in env else None


def check_process_count(cfg: Config, env: Mapping[str, str], argv: Sequence[str],
                        launcher_argv: Sequence[str] | None) -> None:
    n = requested_processes(env, launcher_argv)
    if n is None:
        return
    count = str(n) if n else "N"
    flags = (f"--use_deepspeed --deepspeed_config_file {cfg.distributed.deepspeed}" if cfg.distributed.deepspeed else "--multi_gpu")
    script = shlex.join(argv)
    raise ConfigError(
        f"accelerate launch was asked for {count} processes but started this one alone: without --use_deepspeed "
        f"or --multi_gpu (or an accelerate config with distributed_type DEEPSPEED or MULTI_GPU) its simple "
        f"launcher runs the script once. Run: accelerate launch --num_processes {count} {flags} {script}  "
        f"(or launch/local.sh {count} ...)")
