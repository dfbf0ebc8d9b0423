"""Resuming on another world size: what must match, and ZeRO state re-sharded for the new ranks.

What a checkpoint saved on N ranks keeps when it resumes on M ranks:

* Model weights, optimizer state (fp32 master weights, Adam moments and step count) and the LR schedule: the
  saved fp32 values, re-partitioned over the M ranks. DeepSpeed ZeRO stores each rank's slice of the flattened
  optimizer state, laid out for N ranks; :func:`universal_copy` turns it into DeepSpeed's *universal checkpoint*
  (one fp32/exp_avg/exp_avg_sq/step file per parameter, ``deepspeed.checkpoint.ds_to_universal``), which an
  engine created with ``"checkpoint": {"load_universal": true}`` loads on any number of ranks.
* The global batch, ``per_device x world x accumulation``: the run must keep it (:func:`check_global_batch`
  names the accumulation that does). With it stay the meaning of a step, the schedule's step count and the data.
* The data position: ``(epoch, steps_in_epoch)`` counts global batches, never per-rank batches. The epoch's
  global batch order is a pure function of (seed, epoch, global batch) (``qa.data.sampler.StepBatchSampler``);
  after the change the remaining global batches of the epoch are the same, in the same order, and each is split
  into ``world x accumulation`` micro-batches dealt round-robin to the M ranks. Every remaining sample is seen
  exactly once, as on N ranks.

Not kept: the per-rank RNG streams (dropout masks). They are drawn per rank, so M ranks cannot continue N
ranks' streams; the resumed run keeps the RNG state seeded at start-up. Resuming is therefore not bit-exact
(nor is it without dropout: a sum over M ranks adds gradients in another order than over N ranks).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import torch

from qa.data.global_batch import global_batch, ways_to_make
from qa.errors import ConfigError

logger = logging.getLogger(__name__)

_RNG_PREFIX = "random_states_"  # accelerate's per-rank RNG files: they belong to the saving ranks


def check_global_batch(saved: int, *, per_device: int, world_size: int, accumulation: int, saved_split: str,
                       where: str) -> None:
    """ConfigError naming the setting that keeps the checkpoint's global batch, unless this run keeps it."""
    now = global_batch(per_device, world_size, accumulation)
    if now == saved:
        return
    head = (f"{where} was saved with a global batch of {saved} ({saved_split}) but this run's is {now} "
            f"({per_device} per device x {world_size} process(es) x {accumulation} accumulation)")
    ways = ways_to_make(saved, per_device=per_device, world_size=world_size, accumulation=accumulation)
    fixes = [" with ".join(f"{k}: {v}" for k, v in way.items()) for way in ways]
    how = (f"on {world_size} process(es) set " + " or ".join(fixes) if fixes
           else f"launch a number of processes that divides {saved}")
    raise ConfigError(f"{head}; the data position and the schedule count global batches: {how} to keep it, or set "
                      "resume_weights_only: true to start a new schedule from the weights")


def zero_state_dirs(checkpoint: Path) -> list[Path]:
    """The engine directories of an Accelerate checkpoint that hold ZeRO-partitioned optimizer state."""
    return sorted(p for p in checkpoint.iterdir() if p.is_dir() and any(p.glob("*optim_states.pt")))


def universal_copy(checkpoint: Path, dest: Path) -> Path:
    """``dest`` becomes ``checkpoint`` with every ZeRO engine directory converted to a universal checkpoint.

    The other files (Accelerate's schedule, trainer state, config) are linked, not copied; the per-rank RNG
    files are left out, since they belong to the ranks that saved them. Nothing in ``checkpoint`` changes.
    """
    from deepspeed.checkpoint import ds_to_universal

    engines = zero_state_dirs(checkpoint)
    if not engines:
        raise ValueError(f"{checkpoint} holds no DeepSpeed ZeRO optimizer state to convert")
    dest.mkdir(parents=True)
    for entry in sorted(checkpoint.iterdir()):
        if entry in engines or entry.name.startswith(_RNG_PREFIX):
            continue
        (dest / entry.name).symlink_to(entry.resolve())
    for engine in engines:
        # One worker each: ds_to_universal would otherwise fork a process pool out of a training process that
        # holds a process group and threads.
        args = argparse.Namespace(input_folder=str(engine), output_folder=str(dest / engine.name),
                                  num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False, strict=True,
                                  inject_missing_state=True)  # plain (non-Megatron) engines do not record it
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):  # its prints and progress bars
            ds_to_universal.main(args)
        logger.debug("ds_to_universal %s:\n%s", engine, out.getvalue())
    return dest


def repair_optimizer_after_universal_load(engine: Any, universal: Path) -> None:
    """Undo two slips of DeepSpeed 0.19's ZeRO-3 universal load (``load_hp_checkpoint_state_from_checkpoint_dir_stage3``).

    * It copies the first parameter group's hyperparameters onto every group, so the no-decay group (biases,
      norms) would get weight decay: each group gets its own saved values back.
    * It gives every group the same ``step`` tensor; torch's foreach/fused Adam increments each group's step in
      place, so the shared counter would advance once per group per step and skew Adam's bias correction.

    Harmless where the load was already right (ZeRO-1/2 restore group by group, with one step tensor each).
    """
    base = getattr(getattr(engine, "optimizer", None), "optimizer", None)  # the torch optimizer under ZeRO
    saved_file = universal / "zero" / "optimizer_state.pt"
    if base is None or not saved_file.is_file():
        return
    saved_groups = torch.load(saved_file, map_location="cpu", weights_only=False).get("param_groups") or []
    if len(saved_groups) == len(base.param_groups):
        for group, saved in zip(base.param_groups, saved_groups, strict=True):
            group.update({k: v for k, v in saved.items() if k != "params"})
    seen: set[int] = set()
    for state in base.state.values():
        step = state.get("step")
        if torch.is_tensor(step):
            if id(step) in seen:
                state["step"] = step.clone()
            seen.add(id(step))
