"""``--do_predict``: answers for ``test_file`` through evaluation's path (distributed forward, gather to
rank 0, the same decoder), written as ``test_predictions.json`` + ``test_nbest_predictions.json``; scored too
(``test/exact_match``, ``test/f1``) when every test example carries answers."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from qa.data import features as qa_features
from qa.data import formats as qa_formats
from qa.distributed.gather import GatheredLogits
from qa.eval.evaluator import EvalExamples, EvalFeatures, decode_and_score, decode_features
from qa.eval.outputs import write_eval_outputs, write_predictions
from qa.eval.settings import EvalSettings
from qa.trainer.evaluation import gather_then_on_rank_zero
from qa.trainer.parts import Model, Session

if TYPE_CHECKING:
    import datasets
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase

    from qa.data.settings import DataSettings

logger = logging.getLogger(__name__)
PREFIX = "test"


@dataclass(frozen=True)
class PredictData:
    features: datasets.Dataset  # windows, as evaluation's
    examples: EvalExamples
    arrays: EvalFeatures | None  # rank 0 only: it alone decodes
    labeled: bool  # every example has answers: score the predictions


def prepare_data(data: DataSettings, acc: Accelerator, tokenizer: PreTrainedTokenizerBase) -> PredictData:
    """Test examples (answers optional) -> windows; built by the main process first, cached, like eval's.

    Collective: every rank calls it.
    """
    with acc.main_process_first():
        examples = qa_formats.load_examples(
            dataset_name=None, dataset_config_name=None, data_file=data.test_file, split="test",
            max_samples=data.max_predict_samples, version_2_with_negative=data.version_2_with_negative,
            require_answers=False)
        feats = qa_features.build_eval_features(
            examples, tokenizer, max_seq_length=data.max_seq_length, doc_stride=data.doc_stride,
            num_proc=data.preprocessing_num_workers, overwrite_cache=data.overwrite_cache, source=data.test_file)
    answers = examples["answers"]
    n_labeled = sum(a is not None for a in answers)
    if 0 < n_labeled < len(answers):
        logger.warning("%s: %d of %d examples have answers; predicting without scoring", data.test_file,
                       n_labeled, len(answers))
    arrays = None
    if acc.is_main_process:
        arrays = EvalFeatures(example_index=np.asarray(feats["example_index"], dtype=np.int64),
                              offsets=qa_features.packed_offsets(feats, data.max_seq_length),
                              cls_index=np.asarray(feats["cls_index"], dtype=np.int64))
    logger.info("test: %d examples (%s), %d windows", len(answers),
                "with answers" if n_labeled == len(answers) else "unlabeled", len(feats))
    return PredictData(
        features=feats, arrays=arrays, labeled=n_labeled == len(answers),
        examples=EvalExamples(ids=list(examples["id"]), contexts=list(examples["context"]),
                              answers=[list(a["text"]) if a is not None else [] for a in answers],
                              questions=list(examples["question"])))


def predict(session: Session, model: Model, test: PredictData, settings: EvalSettings) -> dict[str, float]:
    """Forward over the test windows, gather to rank 0, decode (+ score) and write there.

    Collective: every rank calls it. Metrics (timings, and scores for labeled data) on every rank.
    """
    t0 = time.perf_counter()
    metrics = gather_then_on_rank_zero(session.accelerator, model, test.features, settings,
                                       lambda gathered: _decode_write(test, settings, gathered, t0))
    session.tracker.log(metrics, step=session.state.global_step)
    return metrics


def _decode_write(test: PredictData, settings: EvalSettings, gathered: GatheredLogits, t0: float) -> dict[str, float]:
    """Rank 0: evaluation's decoder on the gathered logits; outputs written atomically in output_dir."""
    assert test.arrays is not None
    decode = settings.decode
    metrics: dict[str, float] = {}
    if test.labeled:
        outcome = decode_and_score(test.examples, test.arrays, gathered.start_logits, gathered.end_logits,
                                   **decode.as_kwargs())
        paths = write_eval_outputs(settings.output_dir, outcome,
                                   version_2_with_negative=decode.version_2_with_negative, prefix=PREFIX)
        metrics.update({f"{PREFIX}/{k}": float(v) for k, v in outcome.metrics.items()})
    else:
        decoded = decode_features(test.examples, test.arrays, gathered.start_logits, gathered.end_logits,
                                  **decode.as_kwargs())
        paths = write_predictions(settings.output_dir / f"{PREFIX}_predictions.json", decoded,
                                  version_2_with_negative=decode.version_2_with_negative)
    for k, v in gathered.timings.items():
        metrics[f"{PREFIX}/time_{k}"] = float(v)
    metrics[f"{PREFIX}/time_total_s"] = time.perf_counter() - t0
    logger.info("test: %d predictions written (%s)", len(test.examples.ids), ", ".join(p.name for p in paths))
    return metrics
