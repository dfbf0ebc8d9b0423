"""``--do_predict``: answers for ``test_file`` through evaluation's path (distributed forward, gather to
rank 0, the same decoder), written as ``test_predictions.json`` + ``test_nbest_predictions.json``; scored too
(``test/exact_match``, ``test/f1``) when every test example carries answers."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate.utils import broadcast_object_list

from qa.data import features as qa_features
from qa.data import formats as qa_formats
from qa.distributed.gather import gather_eval_logits
from qa.eval.evaluator import EvalExamples, EvalFeatures, decode_and_score, decode_features
from qa.eval.outputs import write_eval_outputs, write_predictions

if TYPE_CHECKING:
    from qa.trainer.setup import Run

logger = logging.getLogger(__name__)
PREFIX = "test"


@dataclass
class PredictData:
    features: Any  # datasets.Dataset of windows, as evaluation's
    examples: EvalExamples
    arrays: EvalFeatures | None  # rank 0 only: it alone decodes
    labeled: bool  # every example has answers: score the predictions


def prepare_data(run: Run) -> None:
    """Test examples (answers optional) -> windows; built by the main process first, cached, like eval's."""
    cfg, acc = run.cfg, run.accelerator
    with acc.main_process_first():
        examples = qa_formats.load_examples(
            dataset_name=None, dataset_config_name=None, data_file=cfg.test_file, split="test",
            max_samples=cfg.max_predict_samples, version_2_with_negative=cfg.version_2_with_negative,
            require_answers=False)
        feats = qa_features.build_eval_features(
            examples, run.tokenizer, max_seq_length=cfg.max_seq_length, doc_stride=cfg.doc_stride,
            num_proc=cfg.preprocessing_num_workers, overwrite_cache=cfg.overwrite_cache, source=cfg.test_file)
    answers = examples["answers"]
    n_labeled = sum(a is not None for a in answers)
    if 0 < n_labeled < len(answers):
        logger.warning("%s: %d of %d examples have answers; predicting without scoring", cfg.test_file,
                       n_labeled, len(answers))
    arrays = None
    if acc.is_main_process:
        arrays = EvalFeatures(example_index=np.asarray(feats["example_index"], dtype=np.int64),
                              offsets=qa_features.packed_offsets(feats, cfg.max_seq_length),
                              cls_index=np.asarray(feats["cls_index"], dtype=np.int64))
    run.data.test = PredictData(
        features=feats, arrays=arrays, labeled=n_labeled == len(answers),
        examples=EvalExamples(ids=list(examples["id"]), contexts=list(examples["context"]),
                              answers=[list(a["text"]) if a is not None else [] for a in answers],
                              questions=list(examples["question"])))
    logger.info("test: %d examples (%s), %d windows", len(answers),
                "with answers" if n_labeled == len(answers) else "unlabeled", len(feats))


def predict(run: Run) -> dict[str, float]:
    """Forward over the test windows, gather to rank 0, decode (+ score) and write there.

    Collective: every rank calls it. Metrics (timings, and scores for labeled data) on every rank.
    """
    acc, cfg, test = run.accelerator, run.cfg, run.data.test
    t0 = time.perf_counter()
    payload: list[Any] = [None]
    try:
        gathered = gather_eval_logits(
            acc, run.model, test.features,
            input_names=[k for k in run.eval_input_names if k in test.features.column_names],
            collate_fn=run.collator, batch_size=cfg.per_device_eval_batch_size, seq_len=cfg.max_seq_length,
            num_workers=0, generator=torch.Generator().manual_seed(cfg.seed))
        if gathered is not None:
            payload = [_decode_write(run, gathered, t0)]
    except Exception as e:  # noqa: BLE001 - raised on every rank below, so none waits forever
        if not acc.is_main_process:
            raise
        logger.exception("prediction failed on rank 0")
        payload = [{"error": f"{type(e).__name__}: {e}"}]
    payload = broadcast_object_list(payload, from_process=0)
    if "error" in payload[0]:
        raise RuntimeError(f"prediction failed on rank 0: {payload[0]['error']}")
    metrics = payload[0]
    run.tracker.log(metrics, step=run.state.global_step)
    return metrics


def _decode_write(run: Run, gathered: Any, t0: float) -> dict[str, float]:
    """Rank 0: evaluation's decoder on the gathered logits; outputs written atomically in output_dir."""
    cfg, test = run.cfg, run.data.test
    settings = {"n_best_size": cfg.n_best_size, "max_answer_length": cfg.max_answer_length,
                "version_2_with_negative": cfg.version_2_with_negative,
                "null_score_diff_threshold": cfg.null_score_diff_threshold}
    metrics: dict[str, float] = {}
    if test.labeled:
        outcome = decode_and_score(test.examples, test.arrays, gathered.start_logits, gathered.end_logits,
                                   **settings)
        paths = write_eval_outputs(cfg.output_dir, outcome, version_2_with_negative=cfg.version_2_with_negative,
                                   prefix=PREFIX)
        metrics.update({f"{PREFIX}/{k}": float(v) for k, v in outcome.metrics.items()})
    else:
        decoded = decode_features(test.examples, test.arrays, gathered.start_logits, gathered.end_logits,
                                  **settings)
        paths = write_predictions(f"{cfg.output_dir}/{PREFIX}_predictions.json", decoded,
                                  version_2_with_negative=cfg.version_2_with_negative)
    for k, v in gathered.timings.items():
        metrics[f"{PREFIX}/time_{k}"] = float(v)
    metrics[f"{PREFIX}/time_total_s"] = time.perf_counter() - t0
    logger.info("test: %d predictions written (%s)", len(test.examples.ids), ", ".join(p.name for p in paths))
    return metrics
