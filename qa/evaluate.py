"""Rank-0 evaluation glue (decode + score + write) and ``python -m qa.evaluate`` to redo it offline.

The training loop gathers start/end logits on rank 0 and calls :func:`decode_and_score`, then
:func:`write_eval_outputs` and (optionally) :func:`save_eval_arrays`. The CLI reloads those arrays and
re-decodes with other settings (n-best size, answer length, null threshold) without a GPU or a model:

    python -m qa.evaluate --output_dir outputs/run1 --null_score_diff_threshold -1.5 --write --out /tmp/t

Its stdout is exactly the text of ``eval_results.json`` for the same settings (timings go to stderr),
so ``diff <(python -m qa.evaluate --output_dir D) D/eval_results.json`` checks a run's numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from qa.decode import Decoded, decode
from qa.metrics import squad_v1, squad_v2

__all__ = [
    "EvalExamples", "EvalFeatures", "EvalOutcome", "decode_and_score", "load_eval_arrays", "main",
    "save_eval_arrays", "write_eval_outputs",
]

LOGITS_FILE = "eval_logits.npz"
FEATURES_FILE = "eval_features.npz"
EXAMPLES_FILE = "eval_examples.jsonl"
RUN_CONFIG_FILES = ("run_config.json", "run_config.yaml")
DECODE_DEFAULTS: dict[str, Any] = {
    "n_best_size": 20, "max_answer_length": 30, "version_2_with_negative": False,
    "null_score_diff_threshold": 0.0,
}


@dataclass
class EvalFeatures:
    """Per-feature arrays decoding needs, in feature order (the order of the gathered logits)."""

    example_index: np.ndarray  # int [n_features]: index into EvalExamples
    offsets: np.ndarray  # int32 [n_features, L, 2]: char spans, -1 outside the context
    cls_index: np.ndarray  # int [n_features]: position of the null answer


@dataclass
class EvalExamples:
    ids: list[str]
    contexts: list[str]
    answers: list[list[str]]  # gold texts; [] = unanswerable (v2)
    questions: list[str] | None = None


@dataclass
class EvalOutcome:
    decoded: Decoded
    metrics: dict[str, float]
    timings: dict[str, float] = field(default_factory=dict)  # decode_s, score_s


def _as_logits(x: Any) -> np.ndarray:
    # float32 always: it is what save_eval_arrays stores, so a re-decode from disk sees bit-identical
    # inputs and reproduces the run's numbers exactly. Tensors (bf16 included) are converted here.
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def decode_and_score(examples: EvalExamples, feats: EvalFeatures, start_logits: Any, end_logits: Any, *,
                     n_best_size: int = 20, max_answer_length: int = 30,
                     version_2_with_negative: bool = False,
                     null_score_diff_threshold: float = 0.0) -> EvalOutcome:
    """Decode gathered logits ([n_features, L]) into answers and score them against the gold answers.

    v2 scoring passes the null odds as ``na_probs`` with ``na_prob_thresh = null_score_diff_threshold``:
    the official script's "predict no-answer when na_prob > thresh" is then the very rule the decoder
    applied, so ``exact``/``f1`` score the predictions as decoded. ``best_*`` is the official sweep over
    the null odds; like the official script (and HF's run_qa) it re-scores the predictions as given, so
    an example already decoded as "" cannot gain from a higher threshold there.
    """
    t0 = time.perf_counter()
    decoded = decode(
        examples.ids, examples.contexts, feats.example_index, feats.offsets,
        _as_logits(start_logits), _as_logits(end_logits),
        n_best_size=n_best_size, max_answer_length=max_answer_length,
        version_2_with_negative=version_2_with_negative, null_score_diff_threshold=null_score_diff_threshold,
        cls_index=feats.cls_index,
    )
    t1 = time.perf_counter()
    references = dict(zip(examples.ids, examples.answers, strict=True))
    if version_2_with_negative:
        metrics = squad_v2(decoded.predictions, references, na_probs=decoded.null_odds,
                           na_prob_thresh=null_score_diff_threshold)
    else:
        metrics = squad_v1(decoded.predictions, references)
    t2 = time.perf_counter()
    return EvalOutcome(decoded=decoded, metrics=metrics, timings={"decode_s": t1 - t0, "score_s": t2 - t1})


# ---------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write via a temp file in the same directory + os.replace: readers never see a partial file."""
    # A uniquely named temp opened with "xb" (not mkstemp) so the final file gets normal, umask-based
    # permissions instead of 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _write_text(path: Path, text: str) -> Path:
    return _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def metrics_json(metrics: Mapping[str, Any]) -> str:
    """The exact text of ``eval_results.json`` (and of the CLI's stdout)."""
    return json.dumps(dict(metrics), indent=2) + "\n"


def _json_lines_object(mapping: Mapping[str, Any]) -> str:
    # One key per line, each value compact: readable and diffable like indent=2, but encoded by the C
    # encoder (json with indent falls back to the pure-Python one, ~10x slower on the n-best file).
    if not mapping:
        return "{}\n"
    body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}"
                      for k, v in mapping.items())
    return "{\n" + body + "\n}\n"


def write_eval_outputs(output_dir: str | Path, outcome: EvalOutcome, *, version_2_with_negative: bool,
                       prefix: str = "") -> list[Path]:
    """``eval_results.json``, ``predictions.json``, ``nbest_predictions.json`` (+ v2 ``null_odds.json``).

    With ``prefix`` the names become ``{prefix}_eval_results.json`` etc. Null odds of examples with no
    valid span are ``inf``, written as ``Infinity`` (what Python's json reads back).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    def name(base: str) -> Path:
        return out / (f"{prefix}_{base}" if prefix else base)

    written = [
        _write_text(name("eval_results.json"), metrics_json(outcome.metrics)),
        _write_text(name("predictions.json"), _json_lines_object(outcome.decoded.predictions)),
        _write_text(name("nbest_predictions.json"), _json_lines_object(outcome.decoded.nbest)),
    ]
    if version_2_with_negative:
        written.append(_write_text(name("null_odds.json"), _json_lines_object(outcome.decoded.null_odds)))
    return written


def save_eval_arrays(output_dir: str | Path, examples: EvalExamples, feats: EvalFeatures, start_logits: Any,
                     end_logits: Any) -> list[Path]:
    """Everything ``python -m qa.evaluate`` needs to re-decode this evaluation without the model."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start, end = _as_logits(start_logits), _as_logits(end_logits)
    n_feat = np.asarray(feats.example_index).shape[0]
    if start.shape != end.shape or start.ndim != 2 or start.shape[0] != n_feat:
        raise ValueError(f"logits {start.shape}/{end.shape} do not match {n_feat} features")
    questions: Sequence[str | None] = examples.questions if examples.questions is not None else [None] * len(
        examples.ids)
    lines = [
        json.dumps({"id": qid, "context": ctx, "question": q, "answers": list(ans)})
        for qid, ctx, q, ans in zip(examples.ids, examples.contexts, questions, examples.answers, strict=True)
    ]
    # Uncompressed: ~33 MB for SQuAD dev, and compression would cost seconds on rank 0 every evaluation.
    return [
        _atomic_write(out / LOGITS_FILE, lambda f: np.savez(f, start_logits=start, end_logits=end)),
        _atomic_write(out / FEATURES_FILE, lambda f: np.savez(
            f, example_index=np.asarray(feats.example_index, dtype=np.int64),
            offsets=np.asarray(feats.offsets, dtype=np.int32),
            cls_index=np.asarray(feats.cls_index, dtype=np.int64))),
        _write_text(out / EXAMPLES_FILE, "".join(line + "\n" for line in lines)),
    ]


def load_eval_arrays(output_dir: str | Path) -> tuple[EvalExamples, EvalFeatures, np.ndarray, np.ndarray]:
    """Inverse of :func:`save_eval_arrays`; FileNotFoundError names every missing file."""
    d = Path(output_dir)
    missing = [str(d / n) for n in (LOGITS_FILE, FEATURES_FILE, EXAMPLES_FILE) if not (d / n).is_file()]
    if missing:
        raise FileNotFoundError(f"missing saved evaluation arrays: {', '.join(missing)}")
    with np.load(d / LOGITS_FILE) as z:
        start, end = z["start_logits"], z["end_logits"]
    with np.load(d / FEATURES_FILE) as z:
        feats = EvalFeatures(example_index=z["example_index"], offsets=z["offsets"], cls_index=z["cls_index"])
    ids: list[str] = []
    contexts: list[str] = []
    answers: list[list[str]] = []
    questions: list[str | None] = []
    with open(d / EXAMPLES_FILE, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                ids.append(rec["id"])
                contexts.append(rec["context"])
                answers.append(list(rec["answers"]))
                questions.append(rec.get("question"))
    no_questions = all(q is None for q in questions)
    examples = EvalExamples(ids=ids, contexts=contexts, answers=answers,
                            questions=None if no_questions else [q or "" for q in questions])
    if start.shape[0] != feats.example_index.shape[0]:
        raise ValueError(f"{d}: {start.shape[0]} rows of logits but {feats.example_index.shape[0]} features")
    return examples, feats, start, end


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------


def _str2bool(v: str | bool) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("true", "1", "yes", "y", "on"):
        return True
    if s in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def _run_config(output_dir: Path) -> tuple[dict[str, Any], Path | None]:
    """Decoding settings the run used: run_config.json, else the run_config.yaml the trainer writes."""
    for name in RUN_CONFIG_FILES:
        path = output_dir / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            cfg = json.loads(text)
        else:
            import yaml  # only needed for the trainer's YAML; a dependency of the project

            cfg = yaml.safe_load(text)
        if not isinstance(cfg, dict):
            raise ValueError(f"{path}: expected a mapping, got {type(cfg).__name__}")
        return {k: cfg[k] for k in DECODE_DEFAULTS if cfg.get(k) is not None}, path
    return {}, None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m qa.evaluate",
        description="Re-decode and re-score an evaluation from the arrays a run saved (eval_logits.npz, "
                    "eval_features.npz, eval_examples.jsonl). Decoding settings default to the run's "
                    "run_config.json (or run_config.yaml), then to the values shown.")
    p.add_argument("--output_dir", required=True, type=Path, help="run directory holding the saved arrays")
    p.add_argument("--n_best_size", type=int, default=None, help="default: run config, else 20")
    p.add_argument("--max_answer_length", type=int, default=None, help="default: run config, else 30")
    p.add_argument("--null_score_diff_threshold", type=float, default=None,
                   help="default: run config, else 0.0")
    p.add_argument("--version_2_with_negative", type=_str2bool, default=None, metavar="true|false",
                   help="default: run config, else false")
    p.add_argument("--write", action="store_true",
                   help="write eval_results.json, predictions.json, nbest_predictions.json "
                        "(+ null_odds.json)")
    p.add_argument("--out", type=Path, default=None,
                   help="write the outputs here instead of --output_dir (implies --write)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out_dir: Path = args.output_dir
    try:
        examples, feats, start, end = load_eval_arrays(out_dir)
    except FileNotFoundError as e:
        print(f"error: {e}\n(a run saves them when evaluating with save_logits enabled)", file=sys.stderr)
        return 2
    except (ValueError, KeyError, OSError) as e:
        print(f"error: {out_dir}: unreadable saved evaluation: {e}", file=sys.stderr)
        return 2
    try:
        from_config, config_path = _run_config(out_dir)
    except ValueError as e:  # json.JSONDecodeError is one; so is a YAML file that is not a mapping
        print(f"error: {out_dir}: unreadable run config: {e}", file=sys.stderr)
        return 2
    settings = {**DECODE_DEFAULTS, **from_config}
    for key in DECODE_DEFAULTS:
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    try:
        settings = {
            "n_best_size": int(settings["n_best_size"]),
            "max_answer_length": int(settings["max_answer_length"]),
            "version_2_with_negative": _str2bool(settings["version_2_with_negative"]),
            "null_score_diff_threshold": float(settings["null_score_diff_threshold"]),
        }
        outcome = decode_and_score(examples, feats, start, end, **settings)
    except (ValueError, argparse.ArgumentTypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(metrics_json(outcome.metrics))
    sys.stdout.flush()
    source = f" (defaults from {config_path})" if config_path else ""
    print(f"decode {outcome.timings['decode_s']:.3f} s, score {outcome.timings['score_s']:.3f} s: "
          f"{len(examples.ids)} examples, {feats.example_index.shape[0]} features; "
          + ", ".join(f"{k}={v}" for k, v in settings.items()) + source, file=sys.stderr)
    if args.write or args.out is not None:
        paths = write_eval_outputs(args.out or out_dir, outcome,
                                   version_2_with_negative=settings["version_2_with_negative"])
        print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
