"""Evaluation during a run: distributed forward, gather on rank 0, decode + score + write there."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate.utils import broadcast_object_list

from qa.distributed.gather import gather_eval_logits

if TYPE_CHECKING:
    from qa.trainer.setup import Run


from qa.eval.evaluator import decode_and_score
from qa.eval.outputs import save_eval_arrays, write_eval_outputs

logger = logging.getLogger(__name__)


def evaluate(run: Run, *, tag: str = "eval") -> dict[str, float]:
    """Distributed forward, gather to rank 0, decode + score there; metrics returned on every rank."""
    acc, cfg = run.accelerator, run.cfg
    t0 = time.perf_counter()
    payload: list[Any] = [None]
    try:
        # The coverage check runs on rank 0 after the last collective, so catching it here is safe.
        gathered = gather_eval_logits(
            acc, run.model, run.data.eval_features, input_names=run.eval_input_names, collate_fn=run.collator,
            batch_size=cfg.per_device_eval_batch_size, seq_len=cfg.max_seq_length, num_workers=0,
            generator=torch.Generator().manual_seed(cfg.seed),
        )
        if gathered is not None:
            payload = [_decode_score_write(run, gathered, tag, t0)]
    except Exception as e:  # noqa: BLE001 - raised on every rank below, so none waits forever
        if not acc.is_main_process:
            raise
        logger.exception("evaluation failed on rank 0")
        payload = [{"error": f"{type(e).__name__}: {e}"}]
    payload = broadcast_object_list(payload, from_process=0)
    if "error" in payload[0]:
        raise RuntimeError(f"evaluation failed on rank 0: {payload[0]['error']}")
    metrics, table = payload[0]["metrics"], payload[0]["table"]
    run.tracker.log(metrics, step=run.state.global_step)
    if table:
        run.tracker.log_table(f"{tag}/samples", columns=table[0], rows=table[1], step=run.state.global_step)
    # v1 reports exact_match/f1, v2 exact/f1.
    f1, em = metrics.get(f"{tag}/f1"), metrics.get(f"{tag}/exact_match", metrics.get(f"{tag}/exact"))
    if tag == "eval" and f1 is not None:
        run.last_eval = {"final/f1": f1, "final/exact_match": em}
        if run.state.best_f1 is None or f1 > run.state.best_f1:
            run.state.best_f1, run.state.best_exact_match = f1, em
    run.model.train()
    return metrics


def _decode_score_write(run: Run, gathered: Any, tag: str, t0: float) -> dict[str, Any]:
    """Rank 0: decode, score, write outputs; returns what every rank gets."""

    cfg, data = run.cfg, run.data
    outcome = decode_and_score(
        data.eval_examples, data.eval_arrays, gathered.start_logits, gathered.end_logits,
        n_best_size=cfg.n_best_size, max_answer_length=cfg.max_answer_length,
        version_2_with_negative=cfg.version_2_with_negative,
        null_score_diff_threshold=cfg.null_score_diff_threshold,
    )
    write_eval_outputs(cfg.output_dir, outcome, version_2_with_negative=cfg.version_2_with_negative)
    if cfg.save_logits:
        save_eval_arrays(cfg.output_dir, data.eval_examples, data.eval_arrays,
                                 gathered.start_logits, gathered.end_logits)
    metrics = {f"{tag}/{k}": float(v) for k, v in outcome.metrics.items()}
    for k, v in {**gathered.timings, **outcome.timings}.items():
        metrics[f"{tag}/time_{k}"] = float(v)
    metrics[f"{tag}/time_total_s"] = time.perf_counter() - t0
    return {"metrics": metrics, "table": _sample_table(run, outcome)}


def _sample_table(run: Run, outcome: Any) -> tuple[list[str], list[list[Any]]] | None:
    """A fixed sample (same ids every evaluation) of predictions, to watch answers change over training."""
    k = run.cfg.eval_sample_table_size
    ex = run.data.eval_examples
    if not k or not ex.ids:
        return None
    idx = np.linspace(0, len(ex.ids) - 1, num=min(k, len(ex.ids))).astype(int)
    from qa.eval.squad_metrics import normalize_answer

    rows = []
    for i in idx:
        qid = ex.ids[i]
        pred = outcome.decoded.predictions.get(qid, "")
        golds = ex.answers[i]
        ok = any(normalize_answer(pred) == normalize_answer(g) for g in golds) if golds else pred == ""
        question = ex.questions[i] if ex.questions else ""
        rows.append([qid, question, ex.contexts[i][:300], " | ".join(golds), pred, bool(ok)])
    return ["id", "question", "context", "gold", "predicted", "correct"], rows
