#!/usr/bin/env python
"""Post-processing cost of one SQuAD v1.1 dev evaluation: features, pack_offsets, decode, score.

Builds the real eval windows (bert-base-cased tokenizer, max length 384, stride 128, questions
stripped: 10,822 features for 10,570 questions), draws deterministic synthetic logits (a boost on the
gold answer for most windows that contain it, so the numbers look like a half-trained model), then
times each stage separately and prints one Markdown table of medians. Scoring is timed with a cold
normalisation cache, i.e. as the first evaluation of a run pays it.

Data is looked up at run time, never copied into the repo: ``../shared/data/squad-v1.1/dev-v1.1.json``
and ``../shared/data/tokenizers/bert-base-cased`` relative to the repo root, or $SQUAD_DEV and
$QA_TOKENIZER. Without them it prints "skipped: ..." and exits 0.

    python bench/decode.py [--repeat 5] [--n_best_size 20] [--max_answer_length 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local tokenizer directory only, never the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.shared_inputs import squad_dev_and_tokenizer  # noqa: E402
from qa.eval import squad_metrics as qa_metrics  # noqa: E402
from qa.eval.decode import decode, pack_offsets  # noqa: E402

EXPECTED_FEATURES = 10_822
MAX_LEN, STRIDE = 384, 128


def timed(fn: Callable[[], Any], repeat: int, before: Callable[[], None] | None = None
          ) -> tuple[tuple[list[float], list[float]], Any]:
    """((wall seconds, CPU seconds) per run, last result). CPU time is robust to other load on the box."""
    wall, cpu, result = [], [], None
    for _ in range(repeat):
        if before is not None:
            before()
        result = None  # free the previous result outside the timed region
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return (wall, cpu), result


def load_dev(path: Path) -> tuple[list[str], list[str], list[str], list[list[str]], list[int]]:
    ids, questions, contexts, answers, starts = [], [], [], [], []
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                ids.append(qa["id"])
                questions.append(qa["question"])
                contexts.append(para["context"])
                answers.append([a["text"] for a in qa["answers"]])
                starts.append(qa["answers"][0]["answer_start"])
    return ids, questions, contexts, answers, starts


def build_features(tokenizer: Any, ids: list[str], questions: list[str], contexts: list[str]
                   ) -> tuple[list[list[Any]], list[int], list[int], str]:
    """(offset rows, example index, cls index, how): via qa.data when present, else the tokenizer directly."""
    try:
        from qa.data.features import prepare_eval_features
    except ImportError:
        prepare_eval_features = None
    how = "tokenizer (qa.data not available)"
    if prepare_eval_features is not None:
        try:
            out = prepare_eval_features({"id": ids, "question": questions, "context": contexts},
                                        tokenizer=tokenizer, max_seq_length=MAX_LEN, doc_stride=STRIDE)
            return (out["offset_mapping"], list(out["example_index"]), list(out["cls_index"]),
                    "qa.data.prepare_eval_features")
        except (TypeError, KeyError) as e:  # its interface moved on: say so, and measure the plain way
            how = f"tokenizer (qa.data.prepare_eval_features failed: {e!r})"
    enc = tokenizer([q.lstrip() for q in questions], contexts, truncation="only_second", max_length=MAX_LEN,
                    stride=STRIDE, return_overflowing_tokens=True, return_offsets_mapping=True, padding=False)
    rows = []
    for i, offs in enumerate(enc["offset_mapping"]):
        seq = enc.sequence_ids(i)
        rows.append([o if seq[k] == 1 else None for k, o in enumerate(offs)])
    cls = [ids_.index(tokenizer.cls_token_id) for ids_ in enc["input_ids"]]
    return rows, list(enc["overflow_to_sample_mapping"]), cls, how


def synthetic_logits(offsets: np.ndarray, example_index: np.ndarray, answer_starts: list[int],
                     answers: list[list[str]]) -> tuple[np.ndarray, np.ndarray, int]:
    """N(0, 1) logits from default_rng(0), +6 on the gold start/end tokens of ~70% of windows holding them."""
    rng = np.random.default_rng(0)
    n, length = offsets.shape[:2]
    start = rng.standard_normal((n, length), dtype=np.float32)
    end = rng.standard_normal((n, length), dtype=np.float32)
    boost = rng.random(n) < 0.7
    boosted = 0
    for f in np.flatnonzero(boost):
        ex = int(example_index[f])
        a0 = answer_starts[ex]
        a1 = a0 + len(answers[ex][0])
        cs, ce = offsets[f, :, 0], offsets[f, :, 1]
        ctx = cs >= 0
        s = np.flatnonzero(ctx & (cs <= a0) & (ce > a0))
        e = np.flatnonzero(ctx & (cs < a1) & (ce >= a1))
        if s.size and e.size and e[0] >= s[0]:
            start[f, s[0]] += 6.0
            end[f, e[0]] += 6.0
            boosted += 1
    return start, end, boosted


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--n_best_size", type=int, default=20)
    ap.add_argument("--max_answer_length", type=int, default=30)
    args = ap.parse_args()

    inputs = squad_dev_and_tokenizer()
    if inputs is None:
        return 0
    dev, tok_dir = inputs
    default_inputs = dev.name == "dev-v1.1.json" and tok_dir.name == "bert-base-cased"

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    ids, questions, contexts, answers, answer_starts = load_dev(dev)

    t_feat, (rows, example_index, cls_index, how) = timed(
        lambda: build_features(tokenizer, ids, questions, contexts), args.repeat)
    if len(rows) != EXPECTED_FEATURES:
        # The figure holds for the official dev set with bert-base-cased; other inputs may differ.
        level = "error" if default_inputs else "note"
        print(f"{level}: {len(rows):,} features, expected {EXPECTED_FEATURES:,} "
              "(SQuAD v1.1 dev + bert-base-cased)", file=sys.stderr)
        if default_inputs:
            return 1
    t_pack, offsets = timed(lambda: pack_offsets(rows, MAX_LEN), args.repeat)
    fei = np.asarray(example_index, dtype=np.int64)
    cls = np.asarray(cls_index, dtype=np.int64)
    start, end, boosted = synthetic_logits(offsets, fei, answer_starts, answers)

    t_dec, decoded = timed(lambda: decode(
        ids, contexts, fei, offsets, start, end, n_best_size=args.n_best_size,
        max_answer_length=args.max_answer_length, cls_index=cls), args.repeat)
    t_dec_v2, _ = timed(lambda: decode(
        ids, contexts, fei, offsets, start, end, n_best_size=args.n_best_size,
        max_answer_length=args.max_answer_length, cls_index=cls, version_2_with_negative=True), args.repeat)
    references = dict(zip(ids, answers, strict=True))
    t_score, scores = timed(lambda: qa_metrics.squad_v1(decoded.predictions, references), args.repeat,
                            before=qa_metrics._analyse.cache_clear)
    t_score_warm, _ = timed(lambda: qa_metrics.squad_v1(decoded.predictions, references), args.repeat)

    med = statistics.median
    n_entries = sum(len(v) for v in decoded.nbest.values())
    print(f"SQuAD v1.1 dev: {len(ids):,} questions, {len(rows):,} features "
          f"(max_len {MAX_LEN}, stride {STRIDE}; "
          f"features via {how}); synthetic logits, {boosted:,} windows boosted on the gold span; "
          f"n_best_size {args.n_best_size}, max_answer_length {args.max_answer_length}; "
          f"{n_entries:,} n-best entries. Median of {args.repeat} runs, wall-clock seconds unless noted; "
          f"Python {platform.python_version()}, NumPy {np.__version__}, {os.cpu_count()} CPUs.")
    print()
    print("| stage | median s | min s | max s | median CPU s |")
    print("|---|---:|---:|---:|---:|")
    for name, (wall, cpu) in (("build features (tokenize + windows)", t_feat), ("pack_offsets", t_pack),
                              ("decode (n-best spans)", t_dec),
                              ("decode, v2 mode (+ null answers)", t_dec_v2),
                              ("score squad_v1 (cold cache)", t_score),
                              ("score squad_v1 (warm cache)", t_score_warm)):
        print(f"| {name} | {med(wall):.4f} | {min(wall):.4f} | {max(wall):.4f} | {med(cpu):.4f} |")
    total = med(t_dec[0]) + med(t_score[0])
    total_cpu = med(t_dec[1]) + med(t_score[1])
    print(f"| **decode + score (cold)** | **{total:.4f}** | | | **{total_cpu:.4f}** |")
    print(f"| exact_match / f1 | {scores['exact_match']:.2f} / {scores['f1']:.2f} | | | |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nTarget: decode + score < 0.5 s. Load average at the end: {load:.2f} on {os.cpu_count()} CPUs "
          "(wall-clock times grow with other load; CPU times much less).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
