#!/usr/bin/env python
"""Questions per second of ``QuestionAnswerer`` on CPU against a plain per-question loop, on SQuAD dev.

The plain loop is what people write once the pipeline is gone: tokenize one (question, context) pair
truncated to the maximum length, run the model, take argmax start and argmax end. The API windows long
contexts (stride), batches windows sorted by length, and decodes the n-best valid spans with evaluation's
decoder; the table also says how many of the loop's answers are a valid span at all (start and end inside
the context, end >= start). Same model (a small BERT built from a config with the bert-base-cased vocabulary,
random weights: only speed is measured), same questions, one process.

Data is looked up at run time: ``../shared/data/squad-v1.1/dev-v1.1.json`` and
``../shared/data/tokenizers/bert-base-cased`` beside the repo, or $SQUAD_DEV and $QA_TOKENIZER. Without them it
prints "skipped: ..." and exits 0.

    python bench/predict.py [--limit 500] [--model small|distilbert] [--batch_size 32]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local tokenizer directory only, never the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.shared_inputs import squad_dev_and_tokenizer  # noqa: E402
from qa.predict import QuestionAnswerer  # noqa: E402


def load_dev(path: Path, limit: int) -> tuple[list[str], list[str], list[str]]:
    ids, questions, contexts = [], [], []
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                ids.append(qa["id"])
                questions.append(qa["question"])
                contexts.append(para["context"])
    return ids[:limit], questions[:limit], contexts[:limit]


def build_model(kind: str, vocab_size: int) -> torch.nn.Module:
    from transformers import AutoModelForQuestionAnswering, BertConfig, DistilBertConfig

    if kind == "distilbert":  # distilbert-base size: 6 layers, hidden 768
        config: Any = DistilBertConfig(vocab_size=vocab_size)
    else:  # a small BERT: 4 layers, hidden 256 (BERT-mini-like)
        config = BertConfig(vocab_size=vocab_size, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                            intermediate_size=1024)
    torch.manual_seed(0)
    return AutoModelForQuestionAnswering.from_config(config).eval()


def plain_loop(model: torch.nn.Module, tokenizer: Any, questions: list[str], contexts: list[str],
               max_len: int) -> tuple[list[str], int]:
    """One pair at a time, truncated, argmax start/end; returns answers and how many were valid spans."""
    answers, valid = [], 0
    accepted = set(inspect.signature(model.forward).parameters)
    with torch.inference_mode():
        for q, c in zip(questions, contexts, strict=True):
            enc = tokenizer(q, c, truncation="only_second", max_length=max_len, return_offsets_mapping=True,
                            return_tensors="pt")
            offsets = enc.pop("offset_mapping")[0].tolist()
            seq = enc.sequence_ids(0)
            out = model(**{k: v for k, v in enc.items() if k in accepted})
            s, e = int(out.start_logits[0].argmax()), int(out.end_logits[0].argmax())
            ok = seq[s] == 1 and seq[e] == 1 and s <= e
            valid += ok
            answers.append(c[offsets[s][0]:offsets[e][1]] if ok else "")
    return answers, valid


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=500, help="first N dev questions")
    ap.add_argument("--model", choices=["small", "distilbert"], default="small")
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--max_seq_len", type=int, default=384)
    ap.add_argument("--doc_stride", type=int, default=128)
    args = ap.parse_args()

    inputs = squad_dev_and_tokenizer()
    if inputs is None:
        return 0
    dev, tok_dir = inputs
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    ids, questions, contexts = load_dev(dev, args.limit)
    model = build_model(args.model, tokenizer.vocab_size)
    qa = QuestionAnswerer(model, tokenizer, device="cpu")
    settings = dict(max_seq_len=args.max_seq_len, doc_stride=args.doc_stride, batch_size=args.batch_size)
    qa.predict(ids[:8], questions[:8], contexts[:8], **settings)  # warm-up: allocator, kernels
    plain_loop(model, tokenizer, questions[:8], contexts[:8], args.max_seq_len)

    t0 = time.perf_counter()
    decoded = qa.predict(ids, questions, contexts, **settings)
    t_api = time.perf_counter() - t0
    t0 = time.perf_counter()
    loop_answers, loop_valid = plain_loop(model, tokenizer, questions, contexts, args.max_seq_len)
    t_loop = time.perf_counter() - t0

    n = len(ids)
    windows = len(tokenizer([q.lstrip() for q in questions], contexts, truncation="only_second",
                            max_length=args.max_seq_len, stride=args.doc_stride,
                            return_overflowing_tokens=True)["input_ids"])
    api_valid = sum(bool(a) for a in decoded.predictions.values())
    same = sum(a == b for a, b in zip(decoded.predictions.values(), loop_answers, strict=True))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"SQuAD v1.1 dev, first {n} questions ({windows} windows at max_seq_len {args.max_seq_len}, "
          f"doc_stride {args.doc_stride}); model: {args.model} ({n_params / 1e6:.1f}M parameters, random weights, "
          f"float32); CPU, torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"Python {platform.python_version()}, NumPy {np.__version__}, {os.cpu_count()} CPUs.")
    print()
    print("| method | questions | forward passes | seconds | questions/s | valid spans |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| QuestionAnswerer (batch {args.batch_size}, windows, n-best decode) | {n} | "
          f"{-(-windows // args.batch_size)} | {t_api:.1f} | {n / t_api:.1f} | {api_valid}/{n} |")
    print(f"| plain loop (one pair, truncated, argmax) | {n} | {n} | {t_loop:.1f} | {n / t_loop:.1f} | "
          f"{loop_valid}/{n} |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nspeed-up {t_loop / t_api:.2f}x; {same}/{n} answers identical (random weights: agreement is "
          f"not a quality measure). Load average at the end: {load:.2f} on {os.cpu_count()} CPUs.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
