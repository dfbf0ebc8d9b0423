"""Throughput accounting shared by the training loop and bench/train_throughput.py: model FLOPs and GPU peaks.

Imports only torch and numpy so the benchmark can load it by path on a bare GPU box.
"""

from __future__ import annotations

import numpy as np
import torch

# Dense (no structured sparsity) fp16/bf16 tensor-core peaks in TFLOP/s from NVIDIA datasheets, matched
# against torch.cuda.get_device_name() in order (more specific names first). fp32 runs use TF32, whose
# dense peak is half of these on Ampere/Hopper.
GPU_PEAK_TFLOPS: list[tuple[tuple[str, ...], float]] = [
    (("H100", "PCIE"), 756.5),
    (("H100", "NVL"), 835.5),
    (("H200", "NVL"), 835.5),
    (("H100",), 989.4),  # SXM ("NVIDIA H100 80GB HBM3")
    (("H200",), 989.4),  # also GH200
    (("B200",), 2250.0),
    (("A100",), 312.0),
    (("L40S",), 362.1),
    (("L40",), 181.0),
    (("L4",), 121.0),
    (("4090",), 165.2),  # fp16 with fp32 accumulate, which is what autocast matmuls use
    (("V100",), 125.0),
    (("T4",), 65.0),
]


def gpu_peak_tflops(device_name: str, dtype: str) -> float | None:
    name = device_name.upper()
    for keys, peak in GPU_PEAK_TFLOPS:
        if all(k in name for k in keys):
            return peak / 2 if dtype == "fp32" else peak
    return None


def model_shape(model: torch.nn.Module) -> tuple[int, int, int]:
    """(non-embedding parameters, layers, hidden size); ds_numel counts ZeRO-3-partitioned parameters."""
    non_embedding = sum(getattr(p, "ds_numel", p.numel()) for n, p in model.named_parameters()
                        if "embeddings" not in n)
    cfg = model.config
    layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layers
    hidden = getattr(cfg, "hidden_size", None) or cfg.dim
    return non_embedding, layers, hidden


def train_flops(seq_lens: np.ndarray, non_embedding: int, layers: int, hidden: int) -> float:
    # Per token: 6N for the dense weights (forward + backward) plus 12 * layers * hidden * seq_len for
    # QK^T and AV (PaLM appendix B), so a sequence of length s costs s * (6N + 12 L d s).
    s = np.asarray(seq_lens, dtype=np.float64)
    return float(np.sum(s * (6.0 * non_embedding + 12.0 * layers * hidden * s)))


def peak_memory_gb() -> float | None:
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**30
