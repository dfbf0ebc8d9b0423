"""``--do_predict``: answers for ``test_file`` through evaluation's path (distributed forward, gather to
rank 0, the same decoder), written as ``test_predictions.json`` + ``test_nbest_predictions.json``; scored too
(``test/exact_match``, ``test/f1``) when every test example carries answers."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from qa.config import Config
from qa.distributed.gather import GatheredLogits
from qa.eval.evaluator import decode_and_score, decode_features
from qa.eval.outputs import write_eval_outputs, write_predictions
from qa.trainer.evaluation import gather_then_on_rank_zero
from qa.trainer.parts import EvalSet, Model, Session

logger = logging.getLogger(__name__)
PREFIX = "test"


def predict(session: Session, model: Model, test: EvalSet, cfg: Config) -> dict[str, float]:
    """Forward over the test windows, gather to rank 0, decode (+ score) and write there.

    Collective: every rank calls it. Metrics (timings, and scores for labeled data) on every rank.
    """
    t0 = time.perf_counter()
    metrics = gather_then_on_rank_zero(session.accelerator, model, test.features, cfg,
                                       lambda gathered: _decode_write(test, cfg, gathered, t0))
    session.tracker.log(metrics, step=session.state.global_step)
    return metrics


def _decode_write(test: EvalSet, cfg: Config, gathered: GatheredLogits, t0: float) -> dict[str, float]:
    """Rank 0: evaluation's decoder on the gathered logits; outputs written atomically in output_dir."""
    assert test.arrays is not None
    decode = cfg.decode
    metrics: dict[str, float] = {}
    if test.labeled:
        outcome = decode_and_score(test.examples, test.arrays, gathered.start_logits, gathered.end_logits,
                                   **decode.as_kwargs())
        paths = write_eval_outputs(Path(cfg.run.output_dir), outcome,
                                   version_2_with_negative=decode.version_2_with_negative, prefix=PREFIX)
        metrics.update({f"{PREFIX}/{k}": float(v) for k, v in outcome.metrics.items()})
    else:
        decoded = decode_features(test.examples, test.arrays, gathered.start_logits, gathered.end_logits,
                                  **decode.as_kwargs())
        paths = write_predictions(Path(cfg.run.output_dir) / f"{PREFIX}_predictions.json", decoded,
                                  version_2_with_negative=decode.version_2_with_negative)
    for k, v in gathered.timings.items():
        metrics[f"{PREFIX}/time_{k}"] = float(v)
    metrics[f"{PREFIX}/time_total_s"] = time.perf_counter() - t0
    logger.info("test: %d predictions written (%s)", len(test.examples.ids), ", ".join(p.name for p in paths))
    return metrics
