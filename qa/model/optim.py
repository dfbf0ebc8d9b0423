"""Optimizer and learning-rate schedule (or DeepSpeed's, when its JSON owns them)."""

from __future__ import annotations

import math
from typing import Any

import torch
from accelerate.utils import DummyOptim, DummyScheduler
from torch.optim.lr_scheduler import LRScheduler
from transformers import get_scheduler

from qa.model.settings import OptimizerSettings


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weights only: not on biases nor normalisation parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # Under ZeRO-3 the model is partitioned at load time (p.shape is empty); ds_shape is the real one.
        ndim = len(getattr(p, "ds_shape", p.shape))
        if ndim < 2 or name.endswith(".bias") or "norm" in name.lower():
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(settings: OptimizerSettings, model: torch.nn.Module,
                    ds_config: dict[str, Any] | None) -> torch.optim.Optimizer | DummyOptim:
    groups = param_groups(model, settings.weight_decay)
    betas = (settings.adam_beta1, settings.adam_beta2)
    if ds_config is not None and "optimizer" in ds_config:
        # DeepSpeed owns the optimizer (e.g. its CPU Adam for offload, FusedAdam on GPU).
        return DummyOptim(groups, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    fast: dict[str, Any] = {"fused": True} if torch.cuda.is_available() else {"foreach": True}
    return torch.optim.AdamW(groups, lr=settings.learning_rate, betas=betas, eps=settings.adam_epsilon, **fast)


def warmup_steps(settings: OptimizerSettings, total_steps: int) -> int:
    """Warmup optimizer steps: num_warmup_steps, or warmup_ratio of ``total_steps`` rounded up (as
    transformers' TrainingArguments.get_warmup_steps). The one rule for our schedule, DeepSpeed's scheduler
    values (qa.distributed.accelerator) and the dry run (qa.preflight.report)."""
    if settings.warmup_ratio > 0:
        # round() first: 0.1 * 30 is 3.0000000000000004 in floats, which must stay 3, not become 4.
        return math.ceil(round(total_steps * settings.warmup_ratio, 9))
    return settings.num_warmup_steps


def build_scheduler(settings: OptimizerSettings, optimizer: torch.optim.Optimizer | DummyOptim,
                    num_training_steps: int, ds_config: dict[str, Any] | None) -> LRScheduler | DummyScheduler:
    warmup = warmup_steps(settings, num_training_steps)
    if ds_config is not None and "scheduler" in ds_config:
        return DummyScheduler(optimizer, total_num_steps=num_training_steps, warmup_num_steps=warmup)
    return get_scheduler(settings.lr_scheduler_type, optimizer=optimizer, num_warmup_steps=warmup,
                         num_training_steps=num_training_steps)
