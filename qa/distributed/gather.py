"""Distributed evaluation: every rank runs its shard, logits reach rank 0 exactly once, in feature order.

We shard eval batches ourselves instead of letting Accelerate's even_batches repeat samples: repeated
samples would be indistinguishable from a real duplicate, and we want to *check* coverage. Each rank gets
whole length-sorted batches round-robin; ranks with fewer batches run padding batches whose feature
index is -1, so every rank joins the same number of collectives.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

PAD_FEATURE = -1
# Large negative rather than -inf: fp16 logits and NumPy arithmetic on padding stay finite.
LOGIT_PAD = -1e4


class CoverageError(RuntimeError):
    """Gathered eval logits missed or repeated features."""


def eval_batches(lengths: Sequence[int] | np.ndarray, batch_size: int, world_size: int,
                 rank: int) -> list[list[int]]:
    """This rank's eval batches: length-sorted (little padding), round-robin, padded with [-1] batches.

    Pure function of its arguments, so all ranks agree on the split without communicating.
    """
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    batches = [order[i: i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    per_rank = max(1, math.ceil(len(batches) / world_size))
    mine = batches[rank::world_size]
    return mine + [[PAD_FEATURE]] * (per_rank - len(mine))


class IndexedFeatures(torch.utils.data.Dataset):
    """Model inputs plus ``feature_index``; index -1 yields a harmless padding row."""

    def __init__(self, features: Any, input_names: Sequence[str]) -> None:
        self.features = features
        self.input_names = list(input_names)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        row = self.features[max(idx, 0)]
        item = {k: row[k] for k in self.input_names}
        item["feature_index"] = idx
        return item


@dataclass
class GatheredLogits:
    start_logits: np.ndarray
    end_logits: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


def check_coverage(seen: np.ndarray) -> None:
    missing = np.flatnonzero(seen == 0)
    dup = np.flatnonzero(seen > 1)
    if len(missing) or len(dup):
        raise CoverageError(
            f"eval gather covered features wrongly: {len(missing)} missing (e.g. {missing[:10].tolist()}), "
            f"{len(dup)} duplicated (e.g. {dup[:10].tolist()}); refusing to score a partial set")


def gather_eval_logits(accelerator: Any, model: torch.nn.Module, features: Any, *, input_names: Sequence[str],
                       collate_fn: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]], batch_size: int,
                       seq_len: int, num_workers: int = 0,
                       generator: torch.Generator | None = None) -> GatheredLogits | None:
    """Run the model over this rank's shard; rank 0 returns [n_features, seq_len] logits, others None."""
    n = len(features)
    lengths = features["length"] if "length" in features.column_names else [seq_len] * n
    batches = eval_batches(lengths, batch_size, accelerator.num_processes, accelerator.process_index)
    loader = torch.utils.data.DataLoader(
        IndexedFeatures(features, input_names), batch_sampler=batches, collate_fn=collate_fn,
        num_workers=num_workers, pin_memory=accelerator.device.type == "cuda",
        # Its own generator: evaluating must not advance the global RNG that exact resume restores.
        generator=generator if generator is not None else torch.Generator(),
    )
    main = accelerator.is_main_process
    start = np.full((n, seq_len), LOGIT_PAD, dtype=np.float32) if main else None
    end = np.full((n, seq_len), LOGIT_PAD, dtype=np.float32) if main else None
    seen = np.zeros(n, dtype=np.int32) if main else None
    t_fwd = t_gather = 0.0
    model.eval()
    for batch in tqdm(loader, desc="eval", disable=not accelerator.is_local_main_process, leave=False):
        t0 = time.perf_counter()
        fidx = batch.pop("feature_index").to(accelerator.device)
        batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
        with torch.no_grad():
            out = model(**batch)
        # Pad positions carry real-looking logits; blank them so saved logits hold only real tokens.
        pad = batch["attention_mask"] == 0 if "attention_mask" in batch else None
        s_log, e_log = out.start_logits.float(), out.end_logits.float()
        if pad is not None:
            s_log = s_log.masked_fill(pad, LOGIT_PAD)
            e_log = e_log.masked_fill(pad, LOGIT_PAD)
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        # Ranks' batches differ in length and size. Padding each to the fixed [batch_size, 2, seq_len] here
        # makes the all-gather shapes agree with one collective per batch, instead of extra size exchanges.
        logits = torch.stack([s_log, e_log], dim=1)[:, :, :seq_len]
        n, width = logits.shape[0], logits.shape[2]
        logits = torch.nn.functional.pad(logits, (0, seq_len - width, 0, 0, 0, batch_size - n), value=LOGIT_PAD)
        fidx = torch.nn.functional.pad(fidx, (0, batch_size - n), value=PAD_FEATURE)
        g_logits, g_i = accelerator.gather((logits, fidx))
        if main:
            idx = g_i.cpu().numpy()
            keep = idx != PAD_FEATURE
            idx = idx[keep]
            rows = g_logits.cpu().numpy()[keep]
            start[idx] = rows[:, 0]
            end[idx] = rows[:, 1]
            np.add.at(seen, idx, 1)
        t_gather += time.perf_counter() - t1
        t_fwd += t1 - t0
    if not main:
        return None
    check_coverage(seen)
    return GatheredLogits(start, end, {"forward_s": t_fwd, "gather_s": t_gather})
