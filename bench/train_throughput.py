#!/usr/bin/env python
"""Training-step throughput on SQuAD-shaped batches: length-grouped dynamic padding vs padding to max.

Runs a fixed number of optimizer steps (after a few warmup steps) of an extractive-QA model built from a
config (no Hub access) on real SQuAD v1.1 dev windows (bert-base-cased tokenizer, max_length 384, stride
128: 10,822 windows) or, when the shared data is absent, on synthetic windows drawn from the recorded
length histogram of those windows (``qa.data.sampler.SQUAD_V1_DEV_LENGTH_HISTOGRAM``).

The optimized run uses ``qa.data.sampler.grouped_batch_order`` and pads each batch to its longest window
rounded up to 8 (what ``DataCollatorWithPadding(pad_to_multiple_of=8)`` does in training), SDPA attention
and fused (CUDA) / foreach (CPU) AdamW. ``--baseline`` also runs the SAME batches padded to
``--max_seq_length`` with eager attention and the single-tensor AdamW loop, in the same process, and
prints the speed-up. Both runs share dtype, TF32 setting, loss and initial weights.

It only prints; nothing is asserted. Imports are limited to torch, transformers, numpy and
qa/data/sampler.py, qa/model/loss.py and qa/trainer/perf.py (loaded by path) so it runs on a GPU box without accelerate, datasets or deepspeed.

    python bench/train_throughput.py                          # CPU: tiny model; CUDA: distilbert, fp16
    python bench/train_throughput.py --model distilbert --steps 30 --baseline
"""

from __future__ import annotations

import argparse
import gc
import platform
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import machine  # noqa: E402  (bench/machine.py: the CPU, its SIMD level, what auto picks)
from throughput_data import (  # noqa: E402  (bench/throughput_data.py: windows, batch plan, collation)
    BERT_CASED_VOCAB,
    PAD_MULTIPLE,
    Windows,
    collate,
    load_qa_module,
    load_real_windows,
    plan_batches,
    synthetic_windows,
)

qa_loss = load_qa_module("model/loss")
perf = load_qa_module("trainer/perf")

gpu_peak_tflops, model_shape, train_flops = perf.gpu_peak_tflops, perf.model_shape, perf.train_flops

# --------------------------------------------------------------------------------------------------
# Model, memory, FLOPs
# --------------------------------------------------------------------------------------------------


def build_model(name: str, attn: str, device: torch.device) -> torch.nn.Module:
    from transformers import AutoModelForQuestionAnswering, BertConfig, DistilBertConfig

    if name == "distilbert":
        # DistilBertConfig() defaults are distilbert-base sized; the cased checkpoint's vocab is 28,996.
        config = DistilBertConfig(vocab_size=BERT_CASED_VOCAB)
    else:
        # google/bert_uncased_L-2_H-128_A-2 ("bert-tiny") shape with the cased vocabulary.
        config = BertConfig(
            vocab_size=BERT_CASED_VOCAB,
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=512,
        )
    torch.manual_seed(0)  # same initial weights for every run
    model = AutoModelForQuestionAnswering.from_config(config, attn_implementation=attn)
    return model.to(device).train()


def _reset_peak_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        # Writing 5 to clear_refs resets VmHWM (Linux), so each run reports its own peak RSS.
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "max_memory_allocated"
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20, "peak RSS"
    except OSError:
        pass
    # ru_maxrss (KiB on Linux) cannot be reset: it is the process-lifetime peak.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "lifetime peak RSS"


# --------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    label: str
    pad_to_max: bool
    attn: str
    optimizer: str  # "fused" | "foreach" | "plain"
    compile: bool


@dataclass
class RunResult:
    config: RunConfig
    seconds: float
    samples: int
    real_tokens: int
    padded_tokens: int
    useful_flops: float
    executed_flops: float
    peak_mem_gib: float
    mem_kind: str
    final_loss: float
    shape: tuple[int, int, int]  # model_shape()


def make_optimizer(kind: str, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    kw = {"lr": 3e-5, "weight_decay": 0.01}
    if kind == "fused":
        return torch.optim.AdamW(params, fused=True, **kw)
    if kind == "foreach":
        return torch.optim.AdamW(params, foreach=True, **kw)
    # Explicit foreach=False: left unset, torch picks foreach on CUDA by itself.
    return torch.optim.AdamW(params, foreach=False, fused=False, **kw)


def _host_batches(cfg: RunConfig, args: argparse.Namespace, windows: Windows, batches: list[list[int]],
                  device: torch.device) -> tuple[list[dict[str, torch.Tensor]], list[int]]:
    """Every planned batch collated before the clock starts, padded as ``cfg`` says; and each one's padded length."""
    rng = np.random.default_rng(1)  # same labels for every run
    with_types = args.model == "tiny"  # DistilBERT has no token_type_ids
    host, pads = [], []
    for b in batches:
        pad_to = (
            args.max_seq_length
            if cfg.pad_to_max
            else -(-int(windows.lengths[b].max()) // PAD_MULTIPLE) * PAD_MULTIPLE
        )
        pads.append(pad_to)
        host.append(collate(windows, b, pad_to, with_types, rng, pin=device.type == "cuda"))
    return host, pads


def run(
    cfg: RunConfig, args: argparse.Namespace, windows: Windows, batches: list[list[int]], device: torch.device
) -> RunResult:
    _reset_peak_memory(device)
    model = build_model(args.model, cfg.attn, device)
    non_embedding, layers, hidden = model_shape(model)
    optimizer = make_optimizer(cfg.optimizer, [p for p in model.parameters() if p.requires_grad])
    step_model = torch.compile(model, dynamic=not cfg.pad_to_max) if cfg.compile else model
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.dtype)
    scaler = torch.amp.GradScaler(device.type) if args.dtype == "fp16" else None

    host, pads = _host_batches(cfg, args, windows, batches, device)

    def step(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
        start, end = inputs.pop("start_positions"), inputs.pop("end_positions")
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = step_model(**inputs)
            loss = qa_loss.padding_invariant_qa_loss(
                out.start_logits, out.end_logits, inputs["attention_mask"], start, end
            )
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    warm, timed = host[: args.warmup], host[args.warmup :]
    if cfg.compile:
        # Dynamic-shape graphs still specialise on a few guards (e.g. batch*seq <= 4096 in torch 2.13),
        # so compile for the shortest and longest planned shapes before the clock starts.
        warm = warm + [host[int(np.argmin(pads))], host[int(np.argmax(pads))]]
    for inputs in warm:
        step(inputs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    loss = torch.zeros(())
    for inputs in timed:
        loss = step(inputs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0

    timed_batches = batches[args.warmup :]
    real = np.concatenate([windows.lengths[b] for b in timed_batches])
    padded = np.concatenate(
        [np.full(len(b), p) for b, p in zip(timed_batches, pads[args.warmup :], strict=True)]
    )
    peak, mem_kind = _peak_memory(device)
    return RunResult(cfg, seconds, int(real.size), int(real.sum()), int(padded.sum()),
                     train_flops(real, non_embedding, layers, hidden), train_flops(padded, non_embedding, layers, hidden),
                     peak, mem_kind, float(loss), (non_embedding, layers, hidden))


def print_report(
    results: list[RunResult],
    args: argparse.Namespace,
    windows: Windows,
    device: torch.device,
    peak_tflops: float | None,
) -> None:
    dev_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    non_embedding, layers, hidden = results[0].shape
    print(
        f"\n### Training throughput: {args.model} ({non_embedding / 1e6:.1f}M non-embedding params, "
        f"{layers} layers, hidden {hidden}), {args.dtype}, batch {args.batch_size}, "
        f"{args.steps} timed steps after {args.warmup} warmup\n"
    )
    print(f"- device: {dev_name}; torch {torch.__version__}")
    print("\n".join(machine.describe_machine()))
    print(
        f"- data: {windows.source}; mean window {windows.lengths.mean():.1f} real tokens, "
        f"max_seq_length {args.max_seq_length}"
    )
    peak_note = f"{peak_tflops:g} TFLOP/s peak" if peak_tflops else "peak unknown (pass --peak_tflops)"
    if device.type == "cuda":
        print(
            f"- MFU = useful model FLOPs / time / peak ({peak_note}); useful FLOPs count REAL tokens only "
            "(6N + 12*L*d*s per token, s = the window's real length); 'executed' counts padded positions"
        )
    print()
    _print_table(results, args, device, peak_tflops)
    if len(results) == 2:
        a, b = results
        speedup = (a.samples / a.seconds) / (b.samples / b.seconds)
        print(
            f"\nSpeed-up grouped/baseline: {speedup:.2f}x samples/s (same {a.samples} samples in both runs); "
            f"peak memory {a.peak_mem_gib / b.peak_mem_gib:.2f}x"
        )
    print(f"Final losses (sanity, not compared): {', '.join(f'{r.final_loss:.3f}' for r in results)}")


def _print_table(results: list[RunResult], args: argparse.Namespace, device: torch.device,
                 peak_tflops: float | None) -> None:
    """One markdown row per run: throughput, padding, memory, and MFU where a GPU's peak is known."""
    header = [
        "run",
        "padding",
        "attention",
        "AdamW",
        "samples/s",
        "real tokens/s",
        "padding fraction",
        "peak memory (GiB)",
        "useful TFLOP/s",
        "MFU (useful)",
        "executed-FLOP util",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in results:
        c = r.config
        useful_tflops = r.useful_flops / r.seconds / 1e12
        if device.type == "cuda" and peak_tflops:
            mfu = f"{100 * useful_tflops / peak_tflops:.1f}%"
            hfu = f"{100 * r.executed_flops / r.seconds / 1e12 / peak_tflops:.1f}%"
        else:
            mfu = hfu = "n/a" if device.type == "cuda" else "n/a (CPU)"
        padding = f"max ({args.max_seq_length})" if c.pad_to_max else f"grouped, batch max ↑{PAD_MULTIPLE}"
        row = [
            c.label + (" +compile" if c.compile else ""),
            padding,
            c.attn,
            c.optimizer,
            f"{r.samples / r.seconds:.2f}",
            f"{r.real_tokens / r.seconds:,.0f}",
            f"{1 - r.real_tokens / r.padded_tokens:.1%}",
            f"{r.peak_mem_gib:.2f} ({r.mem_kind})",
            f"{useful_tflops:.3f}",
            mfu,
            hfu,
        ]
        print("| " + " | ".join(row) + " |")


def main(argv: list[str] | None = None) -> None:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps")
    p.add_argument(
        "--warmup", type=int, default=5, help="untimed steps first (the first is the longest batch)"
    )
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_seq_length", type=int, default=384)
    # On CPU the distilbert-sized model takes seconds per step, so `make bench` defaults to tiny there.
    p.add_argument("--model", choices=["distilbert", "tiny"], default="distilbert" if cuda else "tiny")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16" if cuda else "fp32")
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also run the same batches padded to max_seq_length, eager attention, plain AdamW",
    )
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the optimized run (not the baseline)"
    )
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--data_dir", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--synthetic", action="store_true", help="use synthetic windows even if real data exists")
    p.add_argument("--peak_tflops", type=float, default=None, help="override the GPU peak used for MFU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_bf16", action="store_true", help="on CPU, skip the bf16 run beside fp32 (slow without "
                   "a bf16 unit)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1:
        p.error("--steps must be >= 1, --warmup >= 0, --batch_size >= 1")

    device = torch.device(args.device)
    if device.type == "cuda":
        # TF32 for any fp32 matmul left outside autocast (and for the whole run with --dtype fp32).
        torch.set_float32_matmul_precision("high")

    windows = None if args.synthetic else load_real_windows(args.data_dir, args.max_seq_length)
    if windows is None:
        windows = synthetic_windows(args.max_seq_length, seed=args.seed)
    batches = plan_batches(windows.lengths, args.batch_size, args.warmup + args.steps, args.seed)

    fast_opt = "fused" if device.type == "cuda" else "foreach"
    configs = [RunConfig("grouped", False, "sdpa", fast_opt, args.compile)]
    if args.baseline:
        configs.append(RunConfig("baseline", True, "eager", "plain", False))
    results = []
    for cfg in configs:
        print(f"running {cfg.label} ...", file=sys.stderr, flush=True)
        results.append(run(cfg, args, windows, batches, device))

    peak = args.peak_tflops
    if peak is None and device.type == "cuda":
        peak = gpu_peak_tflops(torch.cuda.get_device_name(device), args.dtype)
    print_report(results, args, windows, device, peak)
    if device.type == "cpu" and args.dtype == "fp32" and not args.no_bf16:
        compare_bf16(results[0], args, windows, batches, device)


def compare_bf16(fp32: RunResult, args: argparse.Namespace, windows: Windows, batches: list[list[int]],
                 device: torch.device) -> None:
    """The same batches under bf16 autocast: what mixed_precision bf16 would give on this CPU."""
    print("running grouped in bf16 ...", file=sys.stderr, flush=True)
    bf16 = run(fp32.config, argparse.Namespace(**{**vars(args), "dtype": "bf16"}), windows, batches, device)
    a, b = fp32.samples / fp32.seconds, bf16.samples / bf16.seconds
    print(f"\nfp32 {a:.2f} samples/s, bf16 {b:.2f} samples/s ({b / a:.2f}x) on {machine.cpu_label()}, "
          f"{torch.get_num_threads()} threads; mixed_precision auto picks "
          f"{machine.machine_precision('auto').name} here")


if __name__ == "__main__":
    main()
