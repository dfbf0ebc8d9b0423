"""The one place that maps the flat config (the keys users write, as ``run_qa_no_trainer.py`` has them) onto the
small sections the components take. A component never sees :class:`TrainConfig`: it takes its section, a frozen
dataclass defined in its own folder's ``settings.py``, so what it can depend on is written down there. Adding a
key for a component: the field in ``schema.py``, the field in its section, one line here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qa.checkpoint.settings import CheckpointSettings, StorageSettings
from qa.config.load import config_yaml
from qa.config.schema import TrainConfig
from qa.data.settings import DataSettings
from qa.distributed.settings import DistributedSettings
from qa.eval.settings import DecodeSettings, EvalSettings
from qa.model.settings import ModelSettings, OptimizerSettings
from qa.tracking.settings import TrackingSettings
from qa.trainer.settings import LoopSettings


@dataclass(frozen=True)
class Sections:
    data: DataSettings
    model: ModelSettings
    optimizer: OptimizerSettings
    distributed: DistributedSettings
    storage: StorageSettings
    checkpoint: CheckpointSettings
    tracking: TrackingSettings
    eval: EvalSettings
    loop: LoopSettings


def split_config(cfg: TrainConfig) -> Sections:
    data = DataSettings(
        dataset_name=cfg.dataset_name, dataset_config_name=cfg.dataset_config_name, train_file=cfg.train_file,
        validation_file=cfg.validation_file, test_file=cfg.test_file, do_train=cfg.do_train, do_eval=cfg.do_eval,
        do_predict=cfg.do_predict, version_2_with_negative=cfg.version_2_with_negative,
        skip_misaligned_answers=cfg.skip_misaligned_answers, max_seq_length=cfg.max_seq_length,
        doc_stride=cfg.doc_stride, max_train_samples=cfg.max_train_samples, max_eval_samples=cfg.max_eval_samples,
        max_predict_samples=cfg.max_predict_samples, preprocessing_num_workers=cfg.preprocessing_num_workers,
        overwrite_cache=cfg.overwrite_cache, per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, group_by_length=cfg.group_by_length,
        dataloader_num_workers=cfg.dataloader_num_workers, seed=cfg.seed)
    return Sections(
        data=data,
        model=ModelSettings(model_name_or_path=cfg.model_name_or_path, tokenizer_name=cfg.tokenizer_name,
                            attn_implementation=cfg.attn_implementation, torch_compile=cfg.torch_compile,
                            dropout=cfg.dropout),
        optimizer=OptimizerSettings(
            learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay, adam_beta1=cfg.adam_beta1,
            adam_beta2=cfg.adam_beta2, adam_epsilon=cfg.adam_epsilon, lr_scheduler_type=cfg.lr_scheduler_type,
            num_warmup_steps=cfg.num_warmup_steps, warmup_ratio=cfg.warmup_ratio),
        distributed=DistributedSettings(
            mixed_precision=cfg.mixed_precision, deepspeed=cfg.deepspeed, tf32=cfg.tf32,
            per_device_train_batch_size=cfg.per_device_train_batch_size,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps, max_grad_norm=cfg.max_grad_norm,
            output_dir=cfg.output_dir),
        storage=StorageSettings(uri=cfg.s3_uri, sse=cfg.s3_sse, sse_kms_key_id=cfg.s3_sse_kms_key_id,
                                create_bucket=cfg.s3_create_bucket, upload_timeout_s=cfg.s3_upload_timeout),
        checkpoint=CheckpointSettings(
            output_dir=Path(cfg.output_dir), run_name=cfg.resolved_run_name, save_total_limit=cfg.save_total_limit,
            resume_weights_only=cfg.resume_weights_only, data_order=data.order, config_yaml=config_yaml(cfg),
            keep_training_when_disk_full=cfg.keep_training_when_disk_full),
        tracking=TrackingSettings(
            output_dir=cfg.output_dir, report_to=cfg.report_to, project=cfg.wandb_project, entity=cfg.wandb_entity,
            run_name=cfg.resolved_run_name, group=cfg.wandb_group or cfg.resolved_run_name,
            tags=list(cfg.wandb_tags)),
        eval=EvalSettings(
            batch_size=cfg.per_device_eval_batch_size, max_seq_length=cfg.max_seq_length, seed=cfg.seed,
            output_dir=Path(cfg.output_dir), save_logits=cfg.save_logits,
            sample_table_size=cfg.eval_sample_table_size,
            decode=DecodeSettings(cfg.n_best_size, cfg.max_answer_length, cfg.version_2_with_negative,
                                  cfg.null_score_diff_threshold)),
        loop=LoopSettings(
            num_train_epochs=cfg.num_train_epochs, max_train_steps=cfg.max_train_steps,
            max_grad_norm=cfg.max_grad_norm, logging_steps=cfg.logging_steps, do_eval=cfg.do_eval,
            eval_strategy=cfg.eval_strategy, eval_steps=cfg.eval_steps, checkpointing_steps=cfg.checkpointing_steps,
            export_every_checkpoint=cfg.export_every_checkpoint,
            preemption_grace_seconds=cfg.preemption_grace_seconds, output_dir=Path(cfg.output_dir)),
    )
