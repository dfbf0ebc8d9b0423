"""Throughput accounting: model FLOPs per token and known accelerator peaks, for MFU."""

from __future__ import annotations

from typing import Any

import torch

# Dense fp16/bf16 tensor-core peaks (TFLOP/s), from the vendors' data sheets (no sparsity).
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "A10G": 125.0,
    "L40S": 362.0,
    "L4": 121.0,
    "V100": 125.0,
    "T4": 65.0,
}


def device_peak_tflops(name: str | None = None) -> float | None:
    if name is None:
        if not torch.cuda.is_available():
            return None
        name = torch.cuda.get_device_name()
    for key, peak in PEAK_TFLOPS.items():  # ordered: specific names before their families
        if key in name:
            return peak
    return None


def flops_per_token(model_config: Any, n_params: int, seq_len: float) -> float:
    """Training FLOPs per real token: 6 x non-embedding params + attention (12 x layers x hidden x seq)."""
    hidden = getattr(model_config, "hidden_size", None) or getattr(model_config, "dim", 0)
    layers = getattr(model_config, "num_hidden_layers", None) or getattr(model_config, "n_layers", 0)
    vocab = getattr(model_config, "vocab_size", 0)
    positions = getattr(model_config, "max_position_embeddings", 0)
    non_embedding = max(0, n_params - (vocab + positions) * hidden)
    return 6.0 * non_embedding + 12.0 * layers * hidden * seq_len


def peak_memory_gb() -> float | None:
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**30
