"""Model-state memory per GPU for each ZeRO stage (Rajbhandari et al., 2020) and the parameter count."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qa.config import Config
from qa.errors import ConfigError

GIB = 1024**3


# ---------------------------------------------------------------------------------------------------------
# Memory of the model states (ZeRO paper, Rajbhandari et al. 2020, sections 3 and 5)
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per rank for parameters, gradients and Adam states; activations are deliberately left out."""

    num_params: int
    stage: int
    world_size: int
    params_gpu: float
    grads_gpu: float
    optimizer_gpu: float
    host: float  # bytes per rank that offload keeps in CPU memory (or on NVMe) instead
    formula: str

    @property
    def gpu_total(self) -> float:
        return self.params_gpu + self.grads_gpu + self.optimizer_gpu


def estimate_memory(num_params: int, *, stage: int, world_size: int, mixed_precision_states: bool,
                    offload_optimizer: bool = False, offload_params: bool = False) -> MemoryEstimate:
    """Per-rank model-state memory under ZeRO ``stage`` on ``world_size`` data-parallel ranks.

    ``mixed_precision_states``: DeepSpeed fp16/bf16 keeps 16-bit params (2Ψ) and grads (2Ψ) plus an fp32
    master copy, Adam m and v (12Ψ). Otherwise (fp32, or plain DDP where autocast keeps fp32 weights) it is
    4Ψ + 4Ψ + 8Ψ. Stage 1 shards the optimizer states, 2 also the gradients, 3 also the parameters.
    Offload moves the optimizer states (and under ZeRO-3 the parameters) off the GPU.
    """
    p, g, k = (2, 2, 12) if mixed_precision_states else (4, 4, 8)
    n = world_size
    labels = ("16-bit params", "16-bit grads", "fp32 master + Adam m, v") if mixed_precision_states \
        else ("fp32 params", "fp32 grads", "Adam m, v")
    # (bytes per parameter, sharded over N?, kept off the GPU?)
    terms = [
        (p, stage >= 3, offload_params and stage >= 3),
        (g, stage >= 2, False),
        (k, stage >= 1, offload_optimizer and stage >= 1),
    ]
    gpu, host = [], 0.0
    for coef, sharded, off in terms:
        size = coef * num_params / (n if sharded else 1)
        gpu.append(0.0 if off else size)
        host += size if off else 0.0

    def term(coef: int, sharded: bool) -> str:
        return f"{coef}Ψ/N" if sharded else f"{coef}Ψ"

    on_gpu = [(c, s, lab) for (c, s, off), lab in zip(terms, labels, strict=True) if not off]
    formula = " + ".join(f"{term(c, s)} ({lab})" for c, s, lab in on_gpu) or "0"
    whole = sum(c for c, s, _ in on_gpu if not s)
    shard = sum(c for c, s, _ in on_gpu if s)
    simple = " + ".join(x for x in (f"{whole}Ψ" if whole else "", f"{shard}Ψ/N" if shard else "") if x)
    if len(on_gpu) > 1:
        formula += f" = {simple}"
    off_terms = [(c, s, lab) for (c, s, off), lab in zip(terms, labels, strict=True) if off]
    if off_terms:
        formula += "; offloaded per rank: " + " + ".join(
            f"{term(c, s)} ({lab})" for c, s, lab in off_terms)
    return MemoryEstimate(num_params=num_params, stage=stage, world_size=n, params_gpu=gpu[0],
                          grads_gpu=gpu[1], optimizer_gpu=gpu[2], host=host, formula=formula)


def count_parameters_from_config(config: Any) -> int:
    """Parameters of the QA model for a transformers config, built on the meta device (no weights)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForQuestionAnswering

    with init_empty_weights():
        model = AutoModelForQuestionAnswering.from_config(config)
    return sum(p.numel() for p in model.parameters())


def count_parameters(cfg: Config) -> tuple[int | None, str]:
    """(parameter count, model class) or (None, why it is unknown): needs only the model's config.json."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(cfg.model.model_name_or_path)
    except Exception as e:  # noqa: BLE001 - offline hub names raise several types; the plan says so
        return None, f"unknown (needs the model config; {type(e).__name__})"
    from transformers import AutoModelForQuestionAnswering

    try:
        cls = AutoModelForQuestionAnswering._model_mapping[type(config)].__name__
    except KeyError:
        raise ConfigError(f"model_name_or_path: {cfg.model.model_name_or_path} ({type(config).__name__}) has no "
                          "question-answering head in transformers") from None
    return count_parameters_from_config(config), cls
