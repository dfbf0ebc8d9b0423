"""Setting up a run: the steps ``train.py`` calls, each one small, in the order they happen."""

from __future__ import annotations

import inspect
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding

from qa.checkpoint.manager import Checkpointer
from qa.checkpoint.state import TrainState, data_order_key
from qa.config import TrainConfig, save_config
from qa.data import features as qa_features
from qa.data import formats as qa_formats
from qa.data.sampler import StepBatchSampler
from qa.distributed.accelerator import build_accelerator, load_deepspeed_config, resolve_precision
from qa.model.build import load_model, load_tokenizer
from qa.model.optim import build_optimizer, build_scheduler
from qa.trainer.export import export_model
from qa.trainer.loop import total_steps
from qa.trainer.output_dir import check_resume_target, claim_output_dir
from qa.trainer.preemption import PreemptionHandler, clear_marker

if TYPE_CHECKING:
    from qa.eval.evaluator import EvalExamples, EvalFeatures

logger = logging.getLogger("qa")


@dataclass
class Data:
    train_features: Any = None
    eval_features: Any = None
    eval_examples: EvalExamples | None = None
    eval_arrays: EvalFeatures | None = None


@dataclass
class Run:
    cfg: TrainConfig
    accelerator: Any
    tracker: Any
    checkpointer: Checkpointer
    preemption: PreemptionHandler
    precision: str
    state: TrainState = field(default_factory=TrainState)
    resume_path: Path | None = None
    tokenizer: Any = None
    data: Data = field(default_factory=Data)
    model: Any = None
    model_config: Any = None
    optimizer: Any = None
    scheduler: Any = None
    collator: Any = None
    train_loader: Any = None
    train_sampler: Any = None
    train_input_names: list[str] = field(default_factory=list)
    eval_input_names: list[str] = field(default_factory=list)
    batches_per_epoch: int = 0
    total_steps: int = 0
    num_epochs: int = 0
    last_eval: dict[str, Any] = field(default_factory=dict)


def _setup_logging(is_main: bool) -> None:
    level = logging.INFO if is_main else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=level, stream=sys.stdout, force=True)
    import datasets
    import transformers

    if is_main:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
    else:  # other ranks: errors only, and no progress bars
        datasets.utils.logging.disable_progress_bar()
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()

def start(cfg: TrainConfig) -> Run:
    """Accelerator, logging, seed, S3 check, checkpoint to resume from, tracker: all before data or model."""
    from qa.tracking.tracker import Tracker, log_with_for

    accelerator = build_accelerator(cfg, log_with=log_with_for(cfg.report_to))
    _setup_logging(accelerator.is_main_process)
    set_seed(cfg.seed)
    precision = resolve_precision(cfg)
    claim_output_dir(cfg, accelerator)  # first write: refuse another run's or a live run's dir, then lock it
    store, uploader = _storage(cfg, accelerator)
    checkpointer = Checkpointer(cfg, accelerator, store, uploader)
    resume_path = checkpointer.resolve(cfg.resume_from_checkpoint)
    check_resume_target(cfg, resume_path, accelerator)  # not past max_train_steps
    state = TrainState(seed=cfg.seed, world_size=accelerator.num_processes, data_order=data_order_key(cfg))
    if resume_path is not None:
        state.tracker_run_id = TrainState.from_file(resume_path / "trainer_state.json").tracker_run_id
    if accelerator.is_main_process:
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        clear_marker(cfg.output_dir)
        save_config(cfg, Path(cfg.output_dir) / "run_config.yaml")
    tracker = Tracker(
        accelerator, output_dir=cfg.output_dir, report_to=cfg.report_to, project=cfg.wandb_project,
        entity=cfg.wandb_entity, run_name=cfg.resolved_run_name, tags=cfg.wandb_tags,
        group=cfg.wandb_group or cfg.resolved_run_name, config=cfg.to_dict(),
        resume_run_id=state.tracker_run_id,
        console=tqdm.write,  # lines land above the progress bars instead of glued to them
    )
    state.tracker_run_id = tracker.run_id
    return Run(cfg=cfg, accelerator=accelerator, tracker=tracker, checkpointer=checkpointer,
               preemption=PreemptionHandler().install(), precision=precision, state=state,
               resume_path=resume_path)


def _storage(cfg: TrainConfig, accelerator: Any) -> tuple[Any, Any]:
    """Rank 0 checks the bucket at start-up (bad credentials or a missing bucket fail before training)."""
    if cfg.s3_uri is None:
        return None, None
    from qa.checkpoint.s3 import S3Store
    from qa.checkpoint.uploader import BackgroundUploader

    store = S3Store(cfg.s3_uri, sse=cfg.s3_sse, sse_kms_key_id=cfg.s3_sse_kms_key_id,
                    create_bucket=cfg.s3_create_bucket)
    error: list[Any] = [None]
    if accelerator.is_main_process:
        try:
            store.check()
        except Exception as e:  # noqa: BLE001 - every rank must stop, not only rank 0
            error = [str(e)]
    from accelerate.utils import broadcast_object_list

    error = broadcast_object_list(error, from_process=0)
    if error[0] is not None:
        raise SystemExit(f"s3_uri: {error[0]}")
    uploader = BackgroundUploader(store, deadline_s=cfg.s3_upload_timeout) if accelerator.is_main_process else None
    return store, uploader


def prepare_data(run: Run) -> None:
    """Examples and features; built once by the main process (cached), then loaded by the others."""
    cfg, acc = run.cfg, run.accelerator
    run.tokenizer = load_tokenizer(cfg)
    num_proc = cfg.preprocessing_num_workers
    with acc.main_process_first():
        if cfg.do_train:
            train_ex = qa_formats.load_examples(
                dataset_name=cfg.dataset_name, dataset_config_name=cfg.dataset_config_name,
                data_file=cfg.train_file, split="train", skip_misaligned=cfg.skip_misaligned_answers,
                max_samples=cfg.max_train_samples, version_2_with_negative=cfg.version_2_with_negative)
            run.data.train_features = qa_features.build_train_features(
                train_ex, run.tokenizer, max_seq_length=cfg.max_seq_length, doc_stride=cfg.doc_stride,
                num_proc=num_proc, overwrite_cache=cfg.overwrite_cache,
                source=cfg.train_file or f"{cfg.dataset_name}:train")
        if cfg.do_eval:
            from qa.eval.evaluator import EvalExamples, EvalFeatures

            eval_ex = qa_formats.load_examples(
                dataset_name=cfg.dataset_name, dataset_config_name=cfg.dataset_config_name,
                data_file=cfg.validation_file, split="validation", max_samples=cfg.max_eval_samples,
                version_2_with_negative=cfg.version_2_with_negative)
            feats = qa_features.build_eval_features(
                eval_ex, run.tokenizer, max_seq_length=cfg.max_seq_length, doc_stride=cfg.doc_stride,
                num_proc=num_proc, overwrite_cache=cfg.overwrite_cache,
                source=cfg.validation_file or f"{cfg.dataset_name}:validation")
            run.data.eval_features = feats
            run.data.eval_examples = EvalExamples(
                ids=list(eval_ex["id"]), contexts=list(eval_ex["context"]),
                answers=[list(a["text"]) for a in eval_ex["answers"]], questions=list(eval_ex["question"]))
            if acc.is_main_process:  # only rank 0 decodes
                run.data.eval_arrays = EvalFeatures(
                    example_index=np.asarray(feats["example_index"], dtype=np.int64),
                    offsets=qa_features.packed_offsets(feats, cfg.max_seq_length),
                    cls_index=np.asarray(feats["cls_index"], dtype=np.int64))
    if cfg.do_train:
        logger.info("train: %d features", len(run.data.train_features))
    if cfg.do_eval:
        logger.info("eval: %d examples, %d features", len(run.data.eval_examples.ids), len(run.data.eval_features))


def build_model(run: Run) -> None:
    """Model, optimizer, schedule and train loader, prepared together (DeepSpeed needs them at once)."""
    cfg, acc = run.cfg, run.accelerator
    model = load_model(cfg)
    run.model_config = model.config
    accepted = set(inspect.signature(model.forward).parameters)
    # pad_to_multiple_of=8: tensor-core friendly shapes at almost no padding cost.
    run.collator = DataCollatorWithPadding(run.tokenizer, pad_to_multiple_of=8)
    run.eval_input_names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in accepted
                            and (run.data.eval_features is None or k in run.data.eval_features.column_names)]
    if not cfg.do_train:
        # Inference needs no optimizer sharding: below ZeRO-3 each rank holds the plain model; under ZeRO-3
        # DeepSpeed partitions the weights (its engine runs without an optimizer).
        if acc.state.deepspeed_plugin is not None and acc.state.deepspeed_plugin.zero_stage >= 3:
            run.model = acc.prepare(model)
        else:
            run.model = model.to(acc.device)
        return
    feats = run.data.train_features
    # Labels stay out of the forward call: the loop computes a padding-invariant loss from the logits.
    run.train_input_names = [k for k in ("input_ids", "attention_mask", "token_type_ids")
                             if k in accepted and k in feats.column_names]
    lengths = np.asarray(feats["length"])
    keep = [c for c in feats.column_names if c in run.train_input_names or c.endswith("_positions")]
    dataset = feats.select_columns(keep)
    run.train_sampler = StepBatchSampler(lengths, cfg.per_device_train_batch_size, acc.num_processes,
                                         cfg.gradient_accumulation_steps, seed=cfg.seed,
                                         group_by_length=cfg.group_by_length)
    if len(run.train_sampler) == 0:
        raise SystemExit(
            f"train: {len(feats)} features cannot fill one optimizer step of "
            f"{cfg.per_device_train_batch_size} x {acc.num_processes} ranks x {cfg.gradient_accumulation_steps} "
            "accumulation; lower the batch size or add data")
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=run.train_sampler, collate_fn=run.collator,
        num_workers=cfg.dataloader_num_workers, pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
        # Its own generator keeps the global RNG (dropout) untouched by loader start-up, which exact
        # resume relies on.
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    run.batches_per_epoch = len(run.train_sampler) // acc.num_processes
    run.total_steps, run.num_epochs = total_steps(cfg, run.batches_per_epoch)
    ds_config = load_deepspeed_config(cfg, world_size=acc.num_processes, precision=run.precision,
                                      num_training_steps=run.total_steps)
    if ds_config is not None:
        acc.state.deepspeed_plugin.deepspeed_config.update(ds_config)
    optimizer = build_optimizer(cfg, model, ds_config)
    scheduler = build_scheduler(cfg, optimizer, run.total_steps, ds_config)
    if cfg.torch_compile:
        model = torch.compile(model)
    run.model, run.optimizer, run.train_loader, run.scheduler = acc.prepare(model, optimizer, loader, scheduler)
    logger.info("train: %d optimizer steps over %d epochs (%d micro-batches per rank per epoch)",
                run.total_steps, run.num_epochs, run.batches_per_epoch)


def resume(run: Run) -> None:
    if run.resume_path is None:
        return
    run.state = run.checkpointer.load(run.resume_path, run.state)
    run.state.tracker_run_id = run.tracker.run_id
    run.state.data_order = data_order_key(run.cfg)


def export(run: Run) -> Path:
    final = Path(run.cfg.output_dir) / "final"
    export_model(run, final)
    run.checkpointer.upload_final(final)
    if run.accelerator.is_main_process:
        logger.info("final model: %s", final)
    return final


def finish(run: Run, outcome: str) -> None:
    """Wait for uploads (bounded), write the summary, close the tracker."""
    st = run.state
    run.tracker.summary({
        "best/f1": st.best_f1, "best/exact_match": st.best_exact_match, **run.last_eval,
        "final/step": st.global_step, "train/total_time_s": st.train_time_s,
        "train/total_tokens": st.tokens_seen, "train/total_samples": st.samples_seen, "outcome": outcome,
    })
    error = None
    try:
        run.checkpointer.wait_uploads(run.cfg.s3_upload_timeout)
    except Exception as e:  # noqa: BLE001 - reported after the tracker is closed
        error = e
    run.tracker.finish()
    run.preemption.uninstall()
    if error is not None:
        raise error

