"""The precision rule as a pure function of the capability flags, every combination; and where it shows."""

from __future__ import annotations

import itertools

import pytest

from qa.distributed.precision import choose_precision, machine_precision, native_bf16
from qa.errors import ConfigError

AVX2 = {"cpu_name": "AMD EPYC", "simd": "AVX2", "avx2": True, "avx512_bf16": False, "amx_bf16": False}


@pytest.mark.parametrize(("avx512_bf16", "amx_bf16", "cuda", "requested"),
                         list(itertools.product([False, True], [False, True], [False, True],
                                                ["auto", "no", "fp16", "bf16"])))
def test_every_combination(avx512_bf16: bool, amx_bf16: bool, cuda: bool, requested: str) -> None:
    caps = {**AVX2, "avx512_bf16": avx512_bf16, "amx_bf16": amx_bf16}
    native = avx512_bf16 or amx_bf16
    assert native_bf16(caps) is native
    if requested == "fp16" and not cuda:
        with pytest.raises(ConfigError, match=r"^mixed_precision: fp16 needs a CUDA GPU"):
            choose_precision(requested, cuda=cuda, cpu_caps=caps)
        return
    choice = choose_precision(requested, cuda=cuda, cpu_caps=caps)
    if requested == "auto":
        assert choice.precision == ("fp16" if cuda else "bf16" if native else "no")
        assert choice.reason.startswith("mixed_precision auto")
    else:
        assert choice.precision == requested  # an explicit choice is kept, slow or not
    slow = requested == "bf16" and not cuda and not native
    assert (choice.warning is not None) is slow
    if not cuda and requested == "auto":
        assert "AMD EPYC, AVX2" in choice.reason  # names the CPU it decided on
        assert ("no native bf16" in choice.reason) is not native


def test_bf16_without_native_unit_warns_in_one_line_saying_why_and_what_to_set() -> None:
    choice = choose_precision("bf16", cuda=False, cpu_caps=AVX2)
    assert choice.precision == "bf16"  # it still trains
    line = choice.warning or ""
    assert "\n" not in line
    assert "AMD EPYC, AVX2" in line and "no native bf16" in line and "slower than fp32" in line
    assert "mixed_precision: auto" in line


def test_unknown_capabilities_mean_no_native_bf16() -> None:
    """A torch that cannot read the CPU flags must not pick the slow path."""
    assert choose_precision("auto", cuda=False, cpu_caps={}).precision == "no"


def test_this_machine_reads_torch_flags() -> None:
    import torch

    caps = torch.cpu.get_capabilities()
    expected = "bf16" if caps.get("avx512_bf16") or caps.get("amx_bf16") else "no"
    assert machine_precision("auto", cuda=False).precision == expected
    assert torch.backends.cpu.get_cpu_capability() in machine_precision("auto", cuda=False).reason
