"""The run's data: every split it uses, read and checked, then cut into cached windows. Runs before the output_dir
claim, so a bad file, a question longer than the window or too little data for one optimizer step stops the run
before anything is written."""

from __future__ import annotations

import logging

from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase

from qa.config import Config
from qa.data import features as qa_features
from qa.data import formats as qa_formats
from qa.data.sampler import check_fills_one_step
from qa.data.settings import DataSettings
from qa.eval.evaluator import EvalExamples, EvalFeatures
from qa.model.build import load_tokenizer
from qa.trainer.parts import Data, EvalSet

logger = logging.getLogger("qa")


def check_data(cfg: Config) -> None:
    """Read and validate every data file this run uses (DataError names the file and id); warms the cache."""
    data, run = cfg.data, cfg.run
    splits = [("train", data.train_file, run.do_train), ("validation", data.validation_file, run.do_eval),
              ("test", data.test_file, run.do_predict)]
    for split, path, used in splits:
        if used and path is not None:
            qa_formats.load_examples(dataset_name=None, dataset_config_name=None, data_file=path, split=split,
                                     skip_misaligned=data.skip_misaligned_answers and split == "train",
                                     max_samples=None, version_2_with_negative=data.version_2_with_negative,
                                     require_answers=split != "test")


def prepare_data(cfg: Config, acc: Accelerator) -> Data:
    """Examples and windows of every split this run uses; built once by the main process (cached), then loaded
    by the others. Runs before the output_dir claim: a question longer than the window, or too few windows for one
    optimizer step, stops the run before anything is written.

    Collective: every rank calls it.
    """
    data, run = cfg.data, cfg.run
    tokenizer = load_tokenizer(cfg.model)
    train, eval_set, test_set = None, None, None
    with acc.main_process_first():
        if run.do_train:
            train_ex = qa_formats.load_examples(
                dataset_name=data.dataset_name, dataset_config_name=data.dataset_config_name,
                data_file=data.train_file, split="train", skip_misaligned=data.skip_misaligned_answers,
                max_samples=data.max_train_samples, version_2_with_negative=data.version_2_with_negative)
            train = qa_features.build_train_features(
                train_ex, tokenizer, max_seq_length=data.max_seq_length, doc_stride=data.doc_stride,
                num_proc=data.preprocessing_num_workers, overwrite_cache=data.overwrite_cache,
                source=data.train_file or f"{data.dataset_name}:train")
        if run.do_eval:
            eval_set = _eval_set(data, tokenizer, "validation", is_main=acc.is_main_process)
        if run.do_predict:
            test_set = _eval_set(data, tokenizer, "test", is_main=acc.is_main_process)
    if train is not None:
        logger.info("train: %d features", len(train))
        check_fills_one_step(len(train), cfg.batch.per_device_train_batch_size, acc.num_processes,
                             cfg.batch.gradient_accumulation_steps)
    for name, es in (("eval", eval_set), ("test", test_set)):
        if es is not None:
            logger.info("%s: %d examples (%s), %d windows", name, len(es.examples.ids),
                        "with answers" if es.labeled else "unlabeled", len(es.features))
    return Data(tokenizer=tokenizer, train=train, eval=eval_set, test=test_set)


def _eval_set(data: DataSettings, tokenizer: PreTrainedTokenizerBase, split: str, *, is_main: bool) -> EvalSet:
    """The evaluation set (split "validation") or the test set of --do_predict (split "test", answers optional)."""
    test = split == "test"
    path = data.test_file if test else data.validation_file
    examples = qa_formats.load_examples(
        dataset_name=None if test else data.dataset_name, dataset_config_name=None if test else data.dataset_config_name,
        data_file=path, split=split, max_samples=data.max_predict_samples if test else data.max_eval_samples,
        version_2_with_negative=data.version_2_with_negative, require_answers=not test)
    feats = qa_features.build_eval_features(
        examples, tokenizer, max_seq_length=data.max_seq_length, doc_stride=data.doc_stride,
        num_proc=data.preprocessing_num_workers, overwrite_cache=data.overwrite_cache,
        source=path or f"{data.dataset_name}:{split}")
    answers = examples["answers"]
    n_labeled = sum(a is not None for a in answers)
    if 0 < n_labeled < len(answers):
        logger.warning("%s: %d of %d examples have answers; predicting without scoring", path, n_labeled,
                       len(answers))
    return EvalSet(
        features=feats, labeled=n_labeled == len(answers),
        examples=EvalExamples(ids=list(examples["id"]), contexts=list(examples["context"]),
                              answers=[list(a["text"]) if a is not None else [] for a in answers],
                              questions=list(examples["question"])),
        arrays=EvalFeatures.of_windows(feats, data.max_seq_length) if is_main else None)  # only rank 0 decodes
