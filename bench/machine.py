"""The machine a benchmark ran on, printed above its numbers: a speed figure means nothing without it.

CPU model, torch's SIMD level (``get_cpu_capability``: the kernels torch dispatches to), whether the CPU computes
bf16 natively, threads per rank, cores available, and what ``mixed_precision: auto`` picks here (the project's own
rule, :func:`qa.distributed.precision.choose_precision`).
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # this checkout's qa/, without installing it

from qa.distributed.precision import cpu_capabilities, describe_cpu, machine_precision, native_bf16  # noqa: E402


def cpu_model() -> str:
    """The model name the kernel reports (``AMD EPYC 7B13``), else torch's (cpuinfo) name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return str(cpu_capabilities().get("cpu_name") or platform.processor() or platform.machine())


def describe_machine() -> list[str]:
    caps = cpu_capabilities()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    lines = [f"- CPU: {cpu_model()} ({cores} cores available to this process, {os.cpu_count()} on the machine)",
             f"- torch {torch.__version__}: SIMD capability {caps.get('simd', 'unknown')}; native bf16 "
             f"(AVX512-BF16/AMX): {'yes' if native_bf16(caps) else 'no'}; "
             f"{torch.get_num_threads()} threads in this process (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})"]
    if torch.cuda.is_available():
        lines.append(f"- GPU: {torch.cuda.get_device_name()}")
    lines.append(f"- mixed_precision auto here: {machine_precision('auto').describe()}")
    return lines


def cpu_label() -> str:
    """``AMD EPYC, AVX2`` for a table row."""
    return describe_cpu(cpu_capabilities())
