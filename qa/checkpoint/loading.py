"""Loading a checkpoint other than as saved: re-sharded to another world size, or its weights only."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from accelerate.utils import gather_object
from accelerate.utils.constants import MODEL_NAME

from qa.checkpoint.reshard import repair_optimizer_after_universal_load, universal_copy
from qa.checkpoint.state import TrainState
from qa.errors import ConfigError

logger = logging.getLogger(__name__)


def load_resharded(accelerator: Any, path: Path, saved: TrainState, *, scratch_root: Path) -> None:
    """Collective: each node's first process converts ``path`` to a universal checkpoint in a scratch directory
    of its own (correct whether ``output_dir`` is shared by the nodes or not), then every rank loads it."""
    acc = accelerator
    node = acc.process_index - acc.local_process_index  # the node's first global rank: one name per node
    scratch = scratch_root / f".universal-{path.name}-{node}"
    t0 = time.perf_counter()
    error = None
    if acc.is_local_main_process:
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            universal_copy(path, scratch)
        except Exception as e:  # noqa: BLE001 - every rank must hear of it, or the others wait forever
            error = f"{type(e).__name__}: {e}"
    errors = [e for e in gather_object([error]) if e] if acc.num_processes > 1 else [e for e in [error] if e]
    if errors:
        raise RuntimeError(f"converting {path} (saved on {saved.world_size} ranks) to a universal checkpoint "
                           f"failed: {errors[0]}")
    converted = time.perf_counter() - t0
    try:
        acc.load_state(str(scratch))
        # Accelerate keeps the (one) DeepSpeed engine's state in MODEL_NAME.
        repair_optimizer_after_universal_load(acc.deepspeed_engine_wrapped.engine, scratch / MODEL_NAME)
    finally:
        acc.wait_for_everyone()
        if acc.is_local_main_process:
            shutil.rmtree(scratch, ignore_errors=True)  # only needed for this load
    logger.info("re-sharded %s from %d to %d ranks: converted in %.2fs, loaded in %.2fs (RNG streams are "
                "per rank and restart from the seed)", path, saved.world_size, acc.num_processes, converted,
                time.perf_counter() - t0 - converted)


def load_model_only(accelerator: Any, path: Path) -> None:
    """Weights only, from save_state's files of a run without DeepSpeed (strict: all keys or an error)."""
    from safetensors.torch import load_file

    files = sorted(path.glob("model*.safetensors"))
    if not files:
        raise ConfigError(f"{path}: no model weights found")
    model = accelerator.unwrap_model(accelerator._models[0], keep_torch_compile=False)
    state: dict[str, Any] = {}
    for f in files:
        # save_state stores the wrapped model's keys (DDP's "module.", torch.compile's "_orig_mod.").
        for k, v in load_file(str(f)).items():
            state[k.removeprefix("module.").replace("_orig_mod.", "")] = v
    model.load_state_dict(state, strict=True)  # a silent partial load would look like a resume
