"""Which precision a run trains in, decided from what the hardware computes natively.

A CPU without a bf16 unit (AVX512-BF16 or AMX on x86) runs bf16 matmuls in torch's reference GEMM: measured on an
AMD EPYC with AVX2 only (2 cores), a MiniLM training step took 6-8x longer in bf16 than in fp32. So ``auto`` is bf16
only where the CPU has the unit, fp32 elsewhere, and fp16 on a CUDA GPU. :func:`choose_precision` is the rule, a pure
function of the flags; :func:`machine_precision` reads the flags of this machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qa.errors import ConfigError

# torch.cpu.get_capabilities() keys of the x86 units that compute bf16 dot products in hardware.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
NAMES = {"no": "fp32", "fp16": "fp16 mixed precision", "bf16": "bf16 mixed precision"}


@dataclass(frozen=True)
class PrecisionChoice:
    """``precision``: Accelerate's name (no | fp16 | bf16); ``reason``: why, for the log and the run record;
    ``warning``: one line when the requested precision will be slow on this machine, else None."""

    precision: str
    reason: str
    warning: str | None = None

    @property
    def name(self) -> str:
        return NAMES[self.precision]

    def describe(self) -> str:
        return f"{self.name} ({self.reason})"


def native_bf16(caps: Mapping[str, Any]) -> bool:
    """Whether a CPU with these torch.cpu.get_capabilities() flags computes bf16 matmuls in hardware."""
    return any(bool(caps.get(flag)) for flag in NATIVE_BF16_FLAGS)


def describe_cpu(caps: Mapping[str, Any]) -> str:
    """``AMD EPYC, AVX2`` from the capability flags (the name, and torch's SIMD level when given)."""
    name = str(caps.get("cpu_name") or caps.get("architecture") or "unknown CPU")
    level = caps.get("simd")
    return f"{name}, {level}" if level else name


def choose_precision(requested: str, *, cuda: bool, cpu_caps: Mapping[str, Any]) -> PrecisionChoice:
    """The precision to train in for ``mixed_precision: requested`` (auto | no | fp16 | bf16).

    ``cpu_caps``: torch.cpu.get_capabilities() of this machine, plus ``simd`` (torch's get_cpu_capability()).
    fp16 on CPU is a ConfigError (it needs a GPU's loss-scaled fp16 path).
    """
    if cuda:
        if requested == "auto":
            return PrecisionChoice("fp16", "mixed_precision auto on a CUDA GPU")
        return PrecisionChoice(requested, f"mixed_precision {requested}")
    cpu = describe_cpu(cpu_caps)
    native = native_bf16(cpu_caps)
    if requested == "fp16":
        raise ConfigError("mixed_precision: fp16 needs a CUDA GPU; use bf16 or no on CPU (or auto)")
    if requested == "auto":
        if native:
            return PrecisionChoice("bf16", f"mixed_precision auto: this CPU ({cpu}) computes bf16 natively")
        return PrecisionChoice("no", f"mixed_precision auto: this CPU ({cpu}) has no native bf16 "
                                     "(AVX512-BF16 or AMX); emulated bf16 is slower than fp32")
    if requested == "bf16" and not native:
        return PrecisionChoice(
            "bf16", f"mixed_precision bf16 on a CPU without native bf16 ({cpu})",
            warning=f"mixed_precision: bf16 on this CPU ({cpu}) has no native bf16 unit (AVX512-BF16 or AMX), so "
                    "torch emulates bf16 matmuls and training runs several times slower than fp32; set "
                    "mixed_precision: auto (fp32 here, bf16 where the CPU has it) or no")
    return PrecisionChoice(requested, f"mixed_precision {requested}" + (" on a CPU with native bf16"
                                                                          if requested == "bf16" else ""))


def cpu_capabilities() -> dict[str, Any]:
    """This machine's torch.cpu.get_capabilities(), with torch's SIMD level under ``simd``; {} if torch cannot say."""
    import torch

    caps: dict[str, Any] = {}
    try:
        caps.update(torch.cpu.get_capabilities())
    except (AttributeError, RuntimeError):  # older torch, or cpuinfo failed: treat bf16 as not native
        pass
    try:
        caps["simd"] = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        pass
    return caps


def machine_precision(requested: str, cuda: bool | None = None) -> PrecisionChoice:
    """:func:`choose_precision` for this machine."""
    import torch

    cuda = torch.cuda.is_available() if cuda is None else cuda
    return choose_precision(requested, cuda=cuda, cpu_caps={} if cuda else cpu_capabilities())
