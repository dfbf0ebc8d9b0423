"""The Accelerator and its DeepSpeed plugin, built from the distributed section and the DeepSpeed JSON."""

from __future__ import annotations

import copy
import json
import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    DeepSpeedPlugin,
    InitProcessGroupKwargs,
    ProjectConfiguration,
)

from qa.data.settings import BatchSettings
from qa.distributed.precision import machine_precision
from qa.distributed.settings import DistributedSettings
from qa.errors import ConfigError
from qa.model.optim import warmup_steps
from qa.model.settings import OptimizerSettings

logger = logging.getLogger(__name__)


def resolve_precision(mixed_precision: str, cuda: bool | None = None) -> str:
    """``mixed_precision`` as this machine runs it (see :mod:`qa.distributed.precision`)."""
    return machine_precision(mixed_precision, cuda).precision


def load_deepspeed_config(dist: DistributedSettings, optimizer: OptimizerSettings, batch: BatchSettings, *,
                          world_size: int, precision: str,
                          num_training_steps: int | None = None) -> dict[str, Any] | None:
    """Read the DeepSpeed JSON and fill every "auto" this run owns from the run config.

    Accelerate fills some "auto" values itself but, e.g., forces gradient_clipping to 1.0; filling them
    here makes the run YAML the single owner of every hyperparameter.
    """
    if dist.deepspeed is None:
        return None
    path = Path(dist.deepspeed)
    try:
        ds = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"deepspeed: cannot read {path}: {e}") from None
    ds = copy.deepcopy(ds)
    values = {
        "train_micro_batch_size_per_gpu": batch.per_device_train_batch_size,
        "gradient_accumulation_steps": batch.gradient_accumulation_steps,
        "train_batch_size": batch.global_batch(world_size),
        "gradient_clipping": optimizer.max_grad_norm,
    }
    for key, val in values.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = val
        elif ds[key] != val:
            raise ConfigError(f"deepspeed: {path} sets {key}={ds[key]} but the run config implies {val}; "
                              f"set it to \"auto\" so the run config owns it")
    for name, on in (("fp16", precision == "fp16"), ("bf16", precision == "bf16")):
        section = ds.setdefault(name, {})
        if section.get("enabled", "auto") == "auto":
            section["enabled"] = on
        elif bool(section["enabled"]) != on:
            raise ConfigError(f"deepspeed: {path} has {name}.enabled={section['enabled']} but mixed_precision "
                              f"resolves to {precision!r}")
    opt = ds.get("optimizer")
    if opt is not None:
        params = opt.setdefault("params", {})
        for key, val in (("lr", optimizer.learning_rate), ("betas", [optimizer.adam_beta1, optimizer.adam_beta2]),
                         ("eps", optimizer.adam_epsilon), ("weight_decay", optimizer.weight_decay)):
            if params.get(key, "auto") == "auto":
                params[key] = val
    sched = ds.get("scheduler")
    if sched is not None and num_training_steps is not None:
        params = sched.setdefault("params", {})
        for key, val in (("warmup_num_steps", warmup_steps(optimizer, num_training_steps)),
                         ("total_num_steps", num_training_steps),
                         ("warmup_max_lr", optimizer.learning_rate), ("warmup_min_lr", 0.0)):
            if params.get(key, "auto") == "auto":
                params[key] = val
    return ds


def zero_stage(ds_config: dict[str, Any] | None) -> int:
    if ds_config is None:
        return 0
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def build_accelerator(dist: DistributedSettings, optimizer: OptimizerSettings, batch: BatchSettings, *,
                      output_dir: str, log_with: str | list[str] | None = None) -> Accelerator:
    """Collective: every rank calls it (it joins the process group)."""
    cuda = torch.cuda.is_available()
    precision = resolve_precision(dist.mixed_precision, cuda)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    ds_config = load_deepspeed_config(dist, optimizer, batch, world_size=world_size, precision=precision)
    kwargs_handlers = [InitProcessGroupKwargs(timeout=timedelta(minutes=30))]
    if not cuda and (world_size > 1 or ds_config is not None):
        # NCCL needs CUDA; gloo runs real collectives (and DeepSpeed ZeRO) on CPU. A single plain process has no
        # process group at all: naming a backend there makes Accelerate look for one that was never started.
        kwargs_handlers = [InitProcessGroupKwargs(backend="gloo", timeout=timedelta(minutes=30))]
    plugin = None
    # The run config decides, whether or not `accelerate launch` was given --use_deepspeed.
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true" if ds_config is not None else "false"
    if ds_config is not None:
        # DeepSpeed without a launcher (plain `python train.py`) still needs a one-rank rendezvous.
        for key, val in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, val)
        if "MASTER_PORT" not in os.environ:
            os.environ["MASTER_PORT"] = str(free_port())
        plugin = DeepSpeedPlugin(hf_ds_config=ds_config)
    accelerator = Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=batch.gradient_accumulation_steps,
        deepspeed_plugin=plugin,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=output_dir, automatic_checkpoint_naming=False),
        # Our batch sampler already makes equal batches per rank; eval pads explicitly (see qa.distributed.gather).
        dataloader_config=DataLoaderConfiguration(even_batches=True),
        kwargs_handlers=kwargs_handlers,
        step_scheduler_with_optimizer=False,  # we step it once per optimizer step ourselves
        # Without CUDA, Accelerate only sets up multi-process CPU (gloo) when told cpu=True; DeepSpeed
        # sets up its own process group and must not get it.
        cpu=not cuda and ds_config is None,
    )
    if world_size > 1 and accelerator.num_processes != world_size:
        # Each rank training alone on the full data would look like a healthy run: refuse it.
        raise RuntimeError(f"launched with WORLD_SIZE={world_size} but the accelerator sees "
                           f"{accelerator.num_processes} process(es) ({accelerator.distributed_type})")
    if cuda and dist.tf32:
        # TF32 matmuls on Ampere+ are within fp16/bf16 training noise and markedly faster.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return accelerator


def free_port() -> int:
    """A currently free loopback TCP port (for a one-process rendezvous, demo and tests)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
