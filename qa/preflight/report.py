"""The dry run: resolve and check everything a launch implies, print it, load no weights.

``train.py --dry_run`` prints :func:`describe_plan`. :func:`check_plan` raises ConfigError for combinations
that would otherwise fail (or silently train something else) minutes into a job on the cluster, and returns
warnings for legal but doubtful ones. The tokenizer and the data are loaded, so feature and step counts are
exact (and the feature cache is warm for the real run); the model is only built on the meta device, to count
its parameters."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qa.config import Config
from qa.lifecycle.ops import describe_ops
from qa.preflight.checks import _gathers_16bit_weights, _offload, _rank, check_plan
from qa.preflight.counts import Schedule, count_data, training_schedule
from qa.preflight.memory import GIB, count_parameters, estimate_memory
from qa.tracking.wandb_sink import default_mode

# ---------------------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------------------


def _int(n: int | None) -> str:
    return "unknown" if n is None else f"{n:,}"


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def _steps(steps: list[int]) -> str:
    if not steps:
        return "none"
    if len(steps) <= 6:
        return ", ".join(f"{s:,}" for s in steps)
    head = ", ".join(f"{s:,}" for s in steps[:3])
    tail = ", ".join(f"{s:,}" for s in steps[-2:])
    return f"{head}, ..., {tail} ({len(steps)} in all)"


def _every(total: int, every: int) -> list[int]:
    return list(range(every, total + 1, every))


def _wandb_mode(env: dict[str, str] | os._Environ) -> str:
    if default_mode(env) == "offline":
        return "offline (neither WANDB_API_KEY nor WANDB_MODE is set here; `wandb sync` uploads later)"
    if env.get("WANDB_MODE"):
        return f"{env['WANDB_MODE']} (WANDB_MODE)"
    return "online (WANDB_API_KEY is set)"


@dataclass(frozen=True)
class _Facts:
    """What the report is about, resolved once: every section reads these."""

    cfg: Config
    world_size: int
    cuda: bool
    precision: str
    precision_reason: str
    ds: dict[str, Any] | None
    stage: int
    off_opt: str
    off_param: str
    num_params: int | None
    model_class: str
    counts: Any
    run_name: str
    warnings: list[str]


class _Lines(list):
    def section(self, title: str) -> None:
        self.append(title)

    def row(self, key: str, value: str) -> None:
        self.append(f"  {key:<20} {value}")


def describe_plan(cfg: Config, *, world_size: int | None = None, cuda: bool | None = None) -> str:
    """The resolved plan as text; "" on every rank but 0, so a launched dry run prints it once."""
    if _rank() != 0:
        return ""
    import torch

    from qa.distributed.accelerator import load_deepspeed_config, zero_stage
    from qa.distributed.precision import machine_precision

    world_size = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() if cuda is None else cuda
    choice = machine_precision(cfg.distributed.mixed_precision, cuda)
    precision = choice.precision
    ds = load_deepspeed_config(cfg.distributed, cfg.optimizer, cfg.batch, world_size=world_size, precision=precision)
    off_opt, off_param = _offload(ds)
    num_params, model_class = count_parameters(cfg)
    f = _Facts(cfg=cfg, world_size=world_size, cuda=cuda, precision=precision, precision_reason=choice.reason, ds=ds, stage=zero_stage(ds),
               off_opt=off_opt, off_param=off_param, num_params=num_params, model_class=model_class,
               counts=count_data(cfg), run_name=cfg.run.resolved_run_name, warnings=check_plan(cfg, world_size, cuda))
    lines = _Lines([f"Dry run for run '{f.run_name}': nothing is trained, no weights are loaded, nothing is "
                    "written to output_dir."])
    _launch(f, lines)
    _model(f, lines)
    _data(f, lines)
    _schedule(f, lines)
    _memory(f, lines)
    _outputs(f, lines)
    if f.warnings:
        lines.section("warnings")
        lines.extend(f"  - {w}" for w in f.warnings)
    return "\n".join(lines)


def _launch(f: _Facts, lines: _Lines) -> None:
    cfg, world_size, cuda, precision, ds, stage = f.cfg, f.world_size, f.cuda, f.precision, f.ds, f.stage
    off_opt, off_param = f.off_opt, f.off_param
    lines.section("launch")
    where = os.environ.get("WORLD_SIZE")
    lines.row("world size", f"{world_size} process(es)" + (" (WORLD_SIZE)" if where else
                                                      " (WORLD_SIZE unset; set it to plan another launch)"))
    lines.row("device", "CUDA GPUs (NCCL)" if cuda else "CPU (gloo)")
    prec_note = f" ({f.precision_reason}" + ("; fp16 when launched on GPUs" if cfg.distributed.mixed_precision == "auto"
                                             and not cuda else "") + ")"
    lines.row("precision", {"no": "fp32", "fp16": "fp16 mixed precision", "bf16": "bf16 mixed precision"}[precision]
        + prec_note)
    if ds is None:
        lines.row("distribution", "DDP (deepspeed: null), no ZeRO sharding")
    else:
        lines.row("distribution", f"DeepSpeed ZeRO-{stage} from {cfg.distributed.deepspeed} (the run config's JSON wins over "
                            "the accelerate config's)")
        lines.row("offload", f"optimizer states -> {off_opt}, parameters -> {off_param}")
        if stage == 3:
            init = os.environ.get("ACCELERATE_DEEPSPEED_ZERO3_INIT", "false").lower() == "true"
            lines.row("ZeRO-3", f"16-bit weights gathered for save_pretrained: "
                f"{'yes' if _gathers_16bit_weights(ds, os.environ) else 'no'}; weights partitioned while "
                f"loading (zero3_init_flag of the accelerate config): {'yes' if init else 'no'}")
    if cfg.model.torch_compile:
        lines.row("torch.compile", "on")
    lines.row("DeepSpeed ops", describe_ops(ds, cuda))  # a JIT build delays the first step by minutes


def _model(f: _Facts, lines: _Lines) -> None:
    cfg, num_params, model_class = f.cfg, f.num_params, f.model_class
    lines.section("model")
    lines.row("model", f"{cfg.model.model_name_or_path}" + (f" ({model_class})" if num_params is not None else ""))
    lines.row("parameters", f"{num_params:,} (Ψ)" if num_params is not None else model_class)
    lines.row("attention", str(cfg.model.attn_implementation or "model default"))


def _data(f: _Facts, lines: _Lines) -> None:
    cfg, world_size, counts = f.cfg, f.world_size, f.counts
    lines.section("data")
    for key, want, src, n_ex, n_feat, unknown in (
            ("train", cfg.run.do_train, cfg.data.train_file or f"{cfg.data.dataset_name} train", counts.train_examples,
             counts.train_features, counts.train_unknown),
            ("eval", cfg.run.do_eval, cfg.data.validation_file or f"{cfg.data.dataset_name} validation",
             counts.eval_examples, counts.eval_features, counts.eval_unknown)):
        if not want:
            continue
        if n_feat is None:
            known = f"{n_ex:,} examples -> features " if n_ex is not None else ""
            lines.row(key, f"{src}: {known}{unknown}")
        else:
            lines.row(key, f"{src}: {_int(n_ex)} examples -> {_int(n_feat)} features")
    lines.row("windows", f"max_seq_length {cfg.data.max_seq_length}, doc_stride {cfg.data.doc_stride}"
        + (", SQuAD v2 (unanswerable questions)" if cfg.data.version_2_with_negative else ""))

    lines.section("batch")
    micro, acc = cfg.batch.per_device_train_batch_size, cfg.batch.gradient_accumulation_steps
    global_batch = cfg.batch.global_batch(world_size)
    lines.row("per device", f"{micro} train, {cfg.eval.per_device_eval_batch_size} eval")
    lines.row("accumulation", f"{acc} micro-batch(es) per optimizer step")
    lines.row("global batch", f"{global_batch} = {micro} per device x {world_size} process(es) x {acc} accumulation"
        + ("" if cfg.batch.total_train_batch_size is None else " (= total_train_batch_size)"))


def _schedule(f: _Facts, lines: _Lines) -> None:
    cfg, world_size, counts, warnings = f.cfg, f.world_size, f.counts, f.warnings
    global_batch = cfg.batch.global_batch(world_size)
    lines.section("schedule")
    sched: Schedule | None = None
    if cfg.run.do_train and counts.train_features is not None:
        sched = training_schedule(cfg, counts.train_features, world_size)
        lines.row("steps per epoch", f"{sched.steps_per_epoch:,} ({counts.train_features:,} features // "
                               f"{global_batch}; the remainder is dropped)")
        why = " (max_train_steps)" if cfg.schedule.max_train_steps is not None \
            else f" (num_train_epochs {cfg.schedule.num_train_epochs:g})"
        lines.row("optimizer steps", f"{sched.total_steps:,} over {sched.epochs} epoch(s){why}")
    elif cfg.run.do_train:
        lines.row("optimizer steps", f"unknown (needs the dataset): features // {global_batch} per epoch x "
                               f"{cfg.schedule.num_train_epochs:g} epoch(s)" if cfg.schedule.max_train_steps is None
            else f"{cfg.schedule.max_train_steps:,} (max_train_steps)")
    else:
        lines.row("optimizer steps", "0 (do_train: false)")
    if cfg.run.do_train:
        from qa.model.optim import warmup_steps

        total = sched.total_steps if sched else cfg.schedule.max_train_steps
        if total is None and cfg.optimizer.warmup_ratio > 0:
            warm_text = f"warmup_ratio {cfg.optimizer.warmup_ratio:g} of the (unknown) optimizer steps"
        else:
            warm = warmup_steps(cfg.optimizer, total or 0)
            frac = f" ({warm / total:.1%} of the run)" if total else ""
            warm_text = f"{warm:,} warmup step(s){frac}"
            if total is not None and warm > total:
                warnings.append(f"num_warmup_steps ({warm}) is more than the {total} optimizer steps")
        lines.row("learning rate", f"{cfg.optimizer.learning_rate:g}, {cfg.optimizer.lr_scheduler_type} schedule, {warm_text}")
    lines.row("evaluation", _eval_line(cfg, sched))
    lines.row("checkpoints", _checkpoint_line(cfg, sched))
    lines.row("preemption", f"SIGTERM/SIGUSR1 -> checkpoint within {cfg.preemption.preemption_grace_seconds:g}s, write "
                      "output_dir/PREEMPTED, exit 42 (launch/ scripts requeue); Ctrl-C -> checkpoint, exit 130")
    lines.row("resume", _resume_line(cfg))
    lines.row("logging", f"every {cfg.schedule.logging_steps} step(s)")


def _memory(f: _Facts, lines: _Lines) -> None:
    cfg, world_size, cuda, precision, ds, stage = f.cfg, f.world_size, f.cuda, f.precision, f.ds, f.stage
    off_opt, off_param, num_params = f.off_opt, f.off_param, f.num_params
    n = world_size
    lines.section(f"memory per {'GPU' if cuda else 'process'} for model states (ZeRO-{stage}, N = {n}"
            + (f", Ψ = {num_params:,})" if num_params else ")"))
    mixed_states = ds is not None and precision in ("fp16", "bf16")
    est = None
    if num_params is not None:
        est = estimate_memory(num_params, stage=stage, world_size=n, mixed_precision_states=mixed_states,
                              offload_optimizer=off_opt != "none", offload_params=off_param != "none")
    proto = estimate_memory(1, stage=stage, world_size=n, mixed_precision_states=mixed_states,
                            offload_optimizer=off_opt != "none", offload_params=off_param != "none")
    lines.row("formula", proto.formula)
    if est is not None:
        lines.row("parameters", format_bytes(est.params_gpu))
        lines.row("gradients", format_bytes(est.grads_gpu))
        lines.row("optimizer states", format_bytes(est.optimizer_gpu))
        lines.row("total", format_bytes(est.gpu_total) + (f" (+ {format_bytes(est.host)} per rank offloaded to "
                                                      f"{off_opt if off_opt != 'none' else off_param})"
                                                      if est.host else ""))
        others = []
        for s in (0, 1, 2, 3):
            # Any stage above 0 means DeepSpeed, which keeps 16-bit states whenever precision is 16-bit.
            alt = estimate_memory(num_params, stage=s, world_size=n,
                                  mixed_precision_states=precision != "no" and (s > 0 or ds is not None))
            others.append(f"ZeRO-{s} {format_bytes(alt.gpu_total)}")
        lines.row("other stages", ", ".join(others) + " (no offload)")
    else:
        lines.row("total", "unknown (needs the model config for Ψ)")
    if not cuda and cfg.distributed.mixed_precision == "auto" and num_params is not None and ds is not None:
        gpu_est = estimate_memory(num_params, stage=stage, world_size=n, mixed_precision_states=True,
                                  offload_optimizer=off_opt != "none", offload_params=off_param != "none")
        lines.row("on GPUs (fp16)", f"{format_bytes(gpu_est.gpu_total)}: mixed_precision auto means fp16 there")
    lines.row("not included", "activations (grow with per-device batch x sequence length; gradient checkpointing "
                        "is off), DeepSpeed communication buckets, ZeRO-3's gathered layers, the CUDA "
                        "context and allocator fragmentation")


def _outputs(f: _Facts, lines: _Lines) -> None:
    cfg, run_name = f.cfg, f.run_name
    lines.section("outputs")
    lines.row("output_dir", f"{cfg.run.output_dir} (run_config.yaml, metrics.jsonl on rank 0's node; each node's "
              "checkpoint files on its own; multi-node without s3_uri: a filesystem all nodes share)")
    lines.row("checkpoints", f"{cfg.run.output_dir}/checkpoints/step_NNNNNNN/")
    if cfg.run.do_train:  # periodic, preemption and Ctrl-C checkpoints
        lines.row("checkpoint disk", _disk_line(f))
    if cfg.run.do_train:
        lines.row("final model", f"{cfg.run.output_dir}/final/ (save_pretrained + tokenizer)")
    if cfg.storage.s3_uri:
        base = f"{cfg.storage.s3_uri.rstrip('/')}/{run_name}"
        lines.row("S3", f"{base}/checkpoints/step_NNNNNNN/" + (f", {base}/final/" if cfg.run.do_train else "")
            + (f" (SSE {cfg.storage.s3_sse})" if cfg.storage.s3_sse else ""))
    else:
        lines.row("S3", "none (s3_uri not set)")
    if cfg.tracking.report_to == "wandb":
        lines.row("W&B", f"project {cfg.tracking.wandb_project}, entity {cfg.tracking.wandb_entity or '(default)'}, group "
                   f"{cfg.tracking.wandb_group or run_name}, run {run_name}; {_wandb_mode(os.environ)}")
    else:
        lines.row("W&B", "off (report_to: none); console and metrics.jsonl only")


def _disk_line(f: _Facts) -> str:
    """One checkpoint's estimated size x the checkpoints kept, against the free space where they go."""
    from qa.checkpoint.disk import estimate_checkpoint_bytes, free_bytes

    cfg = f.cfg
    out = Path(cfg.run.output_dir) / "checkpoints"
    free = free_bytes(out)
    if f.num_params is None:
        return f"size unknown (needs the model config); {format_bytes(free)} free in {out}"
    one = estimate_checkpoint_bytes(f.num_params, deepspeed=f.ds is not None,
                                    mixed_precision=f.precision in ("fp16", "bf16"), export=cfg.checkpoint.export_every_checkpoint)
    # One more than the limit exists for a moment: the newest is written before the oldest is rotated away.
    kept = (cfg.checkpoint.save_total_limit + 1) if cfg.checkpoint.save_total_limit is not None else None
    need = f"{format_bytes(one)} each x {kept} (save_total_limit + 1 while saving) = {format_bytes(one * kept)}" \
        if kept is not None else f"{format_bytes(one)} each, all kept (save_total_limit: null)"
    if kept is not None and one * kept > free:
        f.warnings.append(f"checkpoints need about {format_bytes(one * kept)} in {out}, only {format_bytes(free)} "
                          "is free: lower save_total_limit or free space")
    return f"~{need}; {format_bytes(free)} free in {out}"


def _eval_line(cfg: Config, sched: Schedule | None) -> str:
    if not cfg.run.do_eval:
        return "off (do_eval: false)"
    parts = ["before training"] if cfg.eval.eval_before_training else []
    if cfg.run.do_train:
        if cfg.schedule.eval_strategy == "steps" and cfg.schedule.eval_steps:
            # the last step is not evaluated twice: the final evaluation follows it
            steps = _steps([s for s in _every(sched.total_steps, cfg.schedule.eval_steps) if s < sched.total_steps]) \
                if sched else "unknown"
            parts.append(f"every {cfg.schedule.eval_steps} steps (steps {steps})")
        elif cfg.schedule.eval_strategy == "epoch":
            steps = _steps(sched.epoch_evaluations()) if sched else "unknown"
            parts.append(f"at the end of each epoch but the last (steps {steps})")
        parts.append("after training (final metrics)")
    else:
        parts.append("once (do_train: false)")
    return "; ".join(parts)


def _checkpoint_line(cfg: Config, sched: Schedule | None) -> str:
    if not cfg.run.do_train:
        return "none (do_train: false)"
    c = cfg.schedule.checkpointing_steps
    if c is None:
        what = "no periodic checkpoints (checkpointing_steps: null)"
    elif c == "epoch":
        steps = _steps(sched.epoch_ends()) if sched else "unknown"
        what = f"at the end of each epoch (steps {steps})"
        if sched and sched.total_steps not in sched.epoch_ends():
            shorter = " (shorter than one epoch)" if not sched.epoch_ends() else ""
            what += (f"; max_train_steps ends the run at step {sched.total_steps:,}{shorter}, inside an epoch of "
                     f"{sched.steps_per_epoch:,} steps: saved there too")
    else:
        what = f"every {c} steps (steps {_steps(_every(sched.total_steps, c)) if sched else 'unknown'})"
    keep = "all kept" if cfg.checkpoint.save_total_limit is None else f"newest {cfg.checkpoint.save_total_limit} kept"
    export = "; each also exported to model/" if cfg.checkpoint.export_every_checkpoint else ""
    return f"{what}; {keep}{export}"


def _resume_line(cfg: Config) -> str:
    r = cfg.checkpoint.resume_from_checkpoint
    mode = " (weights only)" if cfg.checkpoint.resume_weights_only \
        else " (model, optimizer, schedule, RNG, data position)"
    if r is None:
        return "start fresh (resume_from_checkpoint: null)"
    if r == "auto":
        where = " else the newest in S3" if cfg.storage.s3_uri else ""
        return f"auto: newest complete checkpoint in {cfg.run.output_dir}/checkpoints{where}, else fresh{mode}"
    return f"from {r}{mode}"
