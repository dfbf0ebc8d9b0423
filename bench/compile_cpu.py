#!/usr/bin/env python
"""torch.compile on CPU, measured: compile time apart from the steady-state step time, fp32.

For each model (the tiny BERT and a distilbert-base-sized one, both built from configs), the same length-grouped,
dynamically padded training batches (SQuAD dev windows, or synthetic ones from their length histogram) run eager
and then compiled (``torch.compile(model, dynamic=True)``, as ``torch_compile: true`` does in train.py):

* compile time: the compiled warm-up steps (the shortest and longest planned shapes, so the timed steps do not
  recompile) minus the eager time of the same steps;
* steady state: seconds per step over the same timed steps, eager and compiled;
* break-even: how many steps a run needs before compiling has paid for itself (none when it is not faster).

It only prints. The step is the one train_throughput.py times (SDPA attention, foreach AdamW).

    python bench/compile_cpu.py                       # tiny and distilbert, 6 timed steps each
    python bench/compile_cpu.py --models tiny --steps 20 --batch_size 16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402
import train_throughput as tt  # noqa: E402


def _steps(model: torch.nn.Module, step_model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    optimizer = tt.make_optimizer("foreach", [p for p in model.parameters() if p.requires_grad])
    t0 = time.perf_counter()
    for inputs in batches:
        inputs = dict(inputs)
        start, end = inputs.pop("start_positions"), inputs.pop("end_positions")
        out = step_model(**inputs)
        loss = tt.qa_loss.padding_invariant_qa_loss(out.start_logits, out.end_logits, inputs["attention_mask"],
                                                    start, end)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def measure(name: str, args: argparse.Namespace, windows: tt.Windows) -> dict[str, float]:
    batches = tt.plan_batches(windows.lengths, args.batch_size, args.steps + 2, args.seed)
    rng = np.random.default_rng(1)
    pads = [-(-int(windows.lengths[b].max()) // tt.PAD_MULTIPLE) * tt.PAD_MULTIPLE for b in batches]
    host = [tt.collate(windows, b, p, name == "tiny", rng, pin=False) for b, p in zip(batches, pads, strict=True)]
    warm = [host[int(np.argmin(pads))], host[int(np.argmax(pads))]]
    timed = host[2:]
    model = tt.build_model(name, "sdpa", torch.device("cpu"))
    eager_warm = _steps(model, model, warm)
    eager = _steps(model, model, timed) / len(timed)
    model = tt.build_model(name, "sdpa", torch.device("cpu"))
    compiled_model = torch.compile(model, dynamic=True)
    compiled_warm = _steps(model, compiled_model, warm)
    compiled = _steps(model, compiled_model, timed) / len(timed)
    return {"eager_s": eager, "compiled_s": compiled, "compile_s": compiled_warm - eager_warm,
            "samples": float(sum(len(b) for b in batches[2:]) / len(timed))}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,distilbert")
    p.add_argument("--steps", type=int, default=6, help="timed steps per run")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_seq_length", type=int, default=384)
    p.add_argument("--data_dir", type=Path, default=tt.REPO.parent / "shared" / "data")
    p.add_argument("--synthetic", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    windows = None if args.synthetic else tt.load_real_windows(args.data_dir, args.max_seq_length)
    if windows is None:
        windows = tt.synthetic_windows(args.max_seq_length, seed=args.seed)
    print("### torch.compile on CPU (fp32, dynamic shapes)\n")
    print("\n".join(machine.describe_machine()))
    print(f"- data: {windows.source}; batch {args.batch_size}, {args.steps} timed steps, length-grouped\n")
    print("| model | eager s/step | compiled s/step | speed-up | compile time (s) | break-even steps |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        r = measure(name, args, windows)
        gain = r["eager_s"] - r["compiled_s"]
        even = f"{r['compile_s'] / gain:.0f}" if gain > 0 else "never (not faster)"
        print(f"| {name} | {r['eager_s']:.3f} | {r['compiled_s']:.3f} | {r['eager_s'] / r['compiled_s']:.2f}x | "
              f"{r['compile_s']:.1f} | {even} |", flush=True)


if __name__ == "__main__":
    main()
