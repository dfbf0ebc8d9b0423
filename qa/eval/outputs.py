"""Evaluation files in ``output_dir``, written atomically: predictions, n-best, null odds, logits."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qa.eval.decode import Decoded
from qa.eval.evaluator import (
    EXAMPLES_FILE,
    FEATURES_FILE,
    LOGITS_FILE,
    EvalExamples,
    EvalFeatures,
    EvalOutcome,
    _as_logits,
)
from qa.files import atomic_write, atomic_write_text

# ---------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------


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


def companion_paths(predictions_path: str | Path) -> tuple[Path, Path]:
    """The n-best and null-odds files that go beside a predictions file, named as evaluation names them.

    ``predictions.json`` -> ``nbest_predictions.json``, ``null_odds.json``; ``test_predictions.json`` ->
    ``test_nbest_predictions.json``, ``test_null_odds.json``; any other ``X.json`` -> ``X_nbest.json``,
    ``X_null_odds.json``.
    """
    path = Path(predictions_path)
    stem, suffix = path.stem, path.suffix or ".json"
    if stem == "predictions" or stem.endswith("_predictions"):
        prefix = stem[: -len("predictions")]
        return path.with_name(f"{prefix}nbest_predictions{suffix}"), path.with_name(f"{prefix}null_odds{suffix}")
    return path.with_name(f"{stem}_nbest{suffix}"), path.with_name(f"{stem}_null_odds{suffix}")


def write_predictions(predictions_path: str | Path, decoded: Decoded, *,
                      version_2_with_negative: bool) -> list[Path]:
    """``{id: answer}`` at ``predictions_path``, the n-best lists (+ v2 null odds) beside it, each atomically."""
    path = Path(predictions_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbest_path, odds_path = companion_paths(path)
    written = [atomic_write_text(path, _json_lines_object(decoded.predictions)),
               atomic_write_text(nbest_path, _json_lines_object(decoded.nbest))]
    if version_2_with_negative:
        written.append(atomic_write_text(odds_path, _json_lines_object(decoded.null_odds)))
    return written


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

    return [atomic_write_text(name("eval_results.json"), metrics_json(outcome.metrics)),
            *write_predictions(name("predictions.json"), outcome.decoded,
                               version_2_with_negative=version_2_with_negative)]


def save_eval_arrays(output_dir: str | Path, examples: EvalExamples, feats: EvalFeatures, start_logits: Any,
                     end_logits: Any) -> list[Path]:
    """Everything ``python -m qa.eval`` needs to re-decode this evaluation without the model."""
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
        atomic_write(out / LOGITS_FILE, lambda f: np.savez(f, start_logits=start, end_logits=end)),
        atomic_write(out / FEATURES_FILE, lambda f: np.savez(
            f, example_index=np.asarray(feats.example_index, dtype=np.int64),
            offsets=np.asarray(feats.offsets, dtype=np.int32),
            cls_index=np.asarray(feats.cls_index, dtype=np.int64))),
        atomic_write_text(out / EXAMPLES_FILE, "".join(line + "\n" for line in lines)),
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
