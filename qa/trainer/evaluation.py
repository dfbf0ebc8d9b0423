"""Evaluation during a run: distributed forward, gather on rank 0, decode + score + write there."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from qa.config import Config
from qa.distributed.gather import GatheredLogits, gather_eval_logits
from qa.distributed.rank_zero import on_rank_zero
from qa.eval.evaluator import EvalOutcome, decode_and_score
from qa.eval.outputs import save_eval_arrays, write_eval_outputs
from qa.eval.squad_metrics import normalize_answer
from qa.trainer.parts import EvalSet, Model, Session

if TYPE_CHECKING:
    import datasets
    from accelerate import Accelerator

logger = logging.getLogger(__name__)
T = TypeVar("T")


def gather_then_on_rank_zero(accelerator: Accelerator, model: Model, features: datasets.Dataset,
                             cfg: Config, on_rank0: Callable[[GatheredLogits], T]) -> T:
    """Collective: every rank calls it. Forward every window on its rank, gather the logits to rank 0, run
    ``on_rank0`` there (decode, score, write) and return its result on every rank.

    A failure on rank 0, in the gather's coverage check or in ``on_rank0``, ends every rank.
    """
    gather_error: Exception | None = None
    gathered = None
    try:
        gathered = gather_eval_logits(
            accelerator, model.module, features,
            input_names=[k for k in model.eval_input_names if k in features.column_names],
            collate_fn=model.collator, batch_size=cfg.eval.per_device_eval_batch_size, seq_len=cfg.data.max_seq_length,
            num_workers=0, generator=torch.Generator().manual_seed(cfg.run.seed))
    except Exception as e:  # noqa: BLE001 - the coverage check fails on rank 0 after the last collective
        if not accelerator.is_main_process:
            raise
        gather_error = e

    def rank0() -> T:
        if gather_error is not None:
            raise gather_error
        assert gathered is not None
        return on_rank0(gathered)

    return on_rank_zero(accelerator, rank0)


def evaluate(session: Session, model: Model, eval_set: EvalSet, cfg: Config, *,
             tag: str = "eval") -> dict[str, float]:
    """Collective: every rank calls it. Forward on every rank, gather to rank 0, decode + score + write there.

    Metrics are returned on every rank; a failure on rank 0 (say a coverage error) ends every rank.
    """
    t0 = time.perf_counter()
    payload = gather_then_on_rank_zero(
        session.accelerator, model, eval_set.features, cfg,
        lambda gathered: _decode_score_write(eval_set, cfg, gathered, tag, t0))
    metrics, table = payload["metrics"], payload["table"]
    step = session.state.global_step
    session.tracker.log(metrics, step=step)
    if table:
        session.tracker.log_table(f"{tag}/samples", columns=table[0], rows=table[1], step=step)
    # v1 reports exact_match/f1, v2 exact/f1.
    f1, em = metrics.get(f"{tag}/f1"), metrics.get(f"{tag}/exact_match", metrics.get(f"{tag}/exact"))
    if tag == "eval" and f1 is not None:
        session.last_eval = {"final/f1": f1, "final/exact_match": em}
        if session.state.best_f1 is None or f1 > session.state.best_f1:
            session.state.best_f1, session.state.best_exact_match = f1, em
    model.module.train()
    return metrics


def _decode_score_write(eval_set: EvalSet, cfg: Config, gathered: GatheredLogits, tag: str,
                        t0: float) -> dict[str, Any]:
    """Rank 0: decode, score, write outputs; returns what every rank gets."""
    assert eval_set.arrays is not None
    decode = cfg.decode
    outcome = decode_and_score(eval_set.examples, eval_set.arrays, gathered.start_logits, gathered.end_logits,
                               **decode.as_kwargs())
    write_eval_outputs(Path(cfg.run.output_dir), outcome, version_2_with_negative=decode.version_2_with_negative)
    if cfg.eval.save_logits:
        save_eval_arrays(Path(cfg.run.output_dir), eval_set.examples, eval_set.arrays,
                         gathered.start_logits, gathered.end_logits)
    metrics = {f"{tag}/{k}": float(v) for k, v in outcome.metrics.items()}
    for k, v in {**gathered.timings, **outcome.timings}.items():
        metrics[f"{tag}/time_{k}"] = float(v)
    metrics[f"{tag}/time_total_s"] = time.perf_counter() - t0
    return {"metrics": metrics, "table": sample_table(eval_set, outcome, cfg.eval.eval_sample_table_size)}


def sample_table(eval_set: EvalSet, outcome: EvalOutcome, k: int) -> tuple[list[str], list[list[Any]]] | None:
    """A fixed sample (same ids every evaluation) of predictions, to watch answers change over training."""
    ex = eval_set.examples
    if not k or not ex.ids:
        return None
    idx = np.linspace(0, len(ex.ids) - 1, num=min(k, len(ex.ids))).astype(int)
    rows = []
    for i in idx:
        qid = ex.ids[i]
        pred = outcome.decoded.predictions.get(qid, "")
        golds = ex.answers[i]
        ok = any(normalize_answer(pred) == normalize_answer(g) for g in golds) if golds else pred == ""
        question = ex.questions[i] if ex.questions else ""
        rows.append([qid, question, ex.contexts[i][:300], " | ".join(golds), pred, bool(ok)])
    return ["id", "question", "context", "gold", "predicted", "correct"], rows
