"""The training loop: steps, logging, periodic evaluation and checkpoints, preemption."""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from qa.checkpoint.state import step_name
from qa.model.loss import padding_invariant_qa_loss
from qa.trainer import startup
from qa.trainer.perf import gpu_peak_tflops, model_shape, peak_memory_gb, train_flops
from qa.trainer.preemption import write_marker

if TYPE_CHECKING:
    from qa.trainer.setup import Run

from qa.trainer.evaluation import evaluate
from qa.trainer.export import export_model

logger = logging.getLogger(__name__)

COMPLETED, PREEMPTED, INTERRUPTED = "completed", "preempted", "interrupted"


class _Meter:
    """Sums local quantities between log lines; reduced across ranks only when logging."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        # On-device sums: no host sync per micro-step, only when a line is logged.
        self.sums: torch.Tensor | float = 0.0
        self.t0 = time.perf_counter()

    def add(self, loss: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        row = torch.stack([
            loss.detach().double(), torch.ones((), dtype=torch.float64, device=loss.device),
            torch.tensor(float(batch["input_ids"].shape[0]), dtype=torch.float64, device=loss.device),
            batch["attention_mask"].sum().double(),
            torch.tensor(float(batch["input_ids"].numel()), dtype=torch.float64, device=loss.device),
        ])
        self.sums = self.sums + row


def _model_inputs(batch: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k in names}


def train(run: Run) -> str:
    """Train from ``run.state`` to the end (or until a signal). Returns COMPLETED, PREEMPTED or INTERRUPTED."""
    acc, cfg, st = run.accelerator, run.cfg, run.state
    model, optimizer, scheduler = run.model, run.optimizer, run.scheduler
    meter = _Meter()
    shape = model_shape(acc.unwrap_model(model))
    dtype = "fp32" if run.precision == "no" else run.precision  # fp32 matmuls run as TF32: half the peak
    peak = gpu_peak_tflops(torch.cuda.get_device_name(), dtype) if torch.cuda.is_available() else None
    bar = tqdm(total=run.total_steps, initial=st.global_step, desc="train",
               disable=not acc.is_local_main_process)
    t_start = time.perf_counter()
    train_time_before = st.train_time_s
    while st.epoch < run.num_epochs and st.global_step < run.total_steps:
        run.train_loader.set_epoch(st.epoch)
        loader = run.train_loader
        if st.batches_in_epoch:
            loader = acc.skip_first_batches(run.train_loader, st.batches_in_epoch)
        model.train()
        for batch in loader:
            with acc.accumulate(model):
                out = model(**_model_inputs(batch, run.train_input_names))
                # HF heads take the softmax over pad positions too, so their loss changes with how far a
                # batch is padded; masking pads makes length grouping change nothing but speed.
                loss = padding_invariant_qa_loss(out.start_logits, out.end_logits, batch["attention_mask"],
                                                 batch["start_positions"], batch["end_positions"])
                acc.backward(loss)
                grad_norm = None
                if acc.sync_gradients:
                    grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                if acc.sync_gradients and not acc.optimizer_step_was_skipped:
                    scheduler.step()  # an fp16 overflow step must not eat warmup
                optimizer.zero_grad(set_to_none=True)
            st.batches_in_epoch += 1
            meter.add(loss, batch)
            if not acc.sync_gradients:
                continue
            st.global_step += 1
            startup.first_step()  # logs the start-up timeline once
            if acc.optimizer_step_was_skipped:
                st.skipped_steps += 1
            bar.update(1)
            if st.global_step % cfg.logging_steps == 0 or st.global_step == run.total_steps:
                _log_train(run, meter, grad_norm, shape, peak)
            if (cfg.do_eval and cfg.eval_strategy == "steps" and st.global_step % cfg.eval_steps == 0
                    and st.global_step < run.total_steps):
                evaluate(run, tag="eval")
                model.train()
            if isinstance(cfg.checkpointing_steps, int) and st.global_step % cfg.checkpointing_steps == 0:
                st.train_time_s = train_time_before + time.perf_counter() - t_start
                save_checkpoint(run)
            _inject_fault(acc.process_index, st.global_step)
            if run.preemption.should_stop(acc):
                return _preempt(run, train_time_before + time.perf_counter() - t_start)
            if st.global_step >= run.total_steps:
                break
        if st.batches_in_epoch >= run.batches_per_epoch:  # the epoch ran to its end
            st.epoch += 1
            st.batches_in_epoch = 0
            if cfg.checkpointing_steps == "epoch":
                st.train_time_s = train_time_before + time.perf_counter() - t_start
                save_checkpoint(run)
            if cfg.do_eval and cfg.eval_strategy == "epoch" and st.epoch < run.num_epochs:
                evaluate(run, tag="eval")
    bar.close()
    st.train_time_s = train_time_before + time.perf_counter() - t_start
    return COMPLETED




def _inject_fault(rank: int, step: int) -> None:
    """Test-only crash injection: QA_FAULT_KILL="RANK:STEP" SIGKILLs that rank after that step.

    A real crash (no handler, no cleanup) at an exact step, which an outside kill cannot hit reliably on a
    model that trains hundreds of steps per second.
    """
    spec = os.environ.get("QA_FAULT_KILL")
    if spec and spec == f"{rank}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)




def _log_train(run: Run, meter: _Meter, grad_norm: Any, shape: tuple[int, int, int], peak: float | None) -> None:
    acc, st = run.accelerator, run.state
    dt = max(time.perf_counter() - meter.t0, 1e-9)
    local = meter.sums if isinstance(meter.sums, torch.Tensor) else torch.zeros(5, dtype=torch.float64,
                                                                                 device=acc.device)
    tot = acc.reduce(local, reduction="sum") if acc.num_processes > 1 else local
    loss_sum, loss_count, samples, tokens, padded = tot.tolist()
    st.samples_seen += int(samples)
    st.tokens_seen += int(tokens)
    metrics: dict[str, float] = {
        "train/loss": loss_sum / max(loss_count, 1),
        "train/lr": float(run.scheduler.get_last_lr()[0]),
        "train/epoch": st.epoch + st.batches_in_epoch / max(run.batches_per_epoch, 1),
        "train/skipped_steps": float(st.skipped_steps),
        "perf/samples_per_s": samples / dt,
        "perf/tokens_per_s": tokens / dt,
        "perf/padding_fraction": 1.0 - tokens / max(padded, 1),
    }
    if grad_norm is not None:
        metrics["train/grad_norm"] = float(grad_norm)
    scale = loss_scale(run)
    if scale is not None:
        metrics["train/loss_scale"] = scale
    if peak is not None and samples:
        # Useful FLOPs (real tokens, mean real length per window), per GPU, as bench/train_throughput.py.
        flops = samples * train_flops(np.array([tokens / samples]), *shape)
        metrics["perf/mfu"] = flops / dt / acc.num_processes / (peak * 1e12)
    mem = peak_memory_gb()
    if mem is not None:
        metrics["perf/peak_mem_gb"] = mem
    run.tracker.log(metrics, step=st.global_step)
    meter.reset()


def loss_scale(run: Run) -> float | None:
    """The fp16 dynamic loss scale, from DeepSpeed's optimizer or Accelerate's GradScaler."""
    if run.precision != "fp16":
        return None
    opt = getattr(run.model, "optimizer", None)  # DeepSpeed engine
    for obj in (opt, getattr(opt, "loss_scaler", None)):
        for attr in ("cur_scale", "loss_scale"):
            val = getattr(obj, attr, None)
            if isinstance(val, int | float):
                return float(val)
    scaler = getattr(run.accelerator, "scaler", None)
    return float(scaler.get_scale()) if scaler is not None else None


def save_checkpoint(run: Run) -> None:
    export = None
    if run.cfg.export_every_checkpoint:
        def export(dest: Any) -> None:
            export_model(run, dest)
    path = run.checkpointer.save(run.state, export=export)
    uri = run.checkpointer.s3_uri_for(f"checkpoints/{path.name}")
    run.tracker.log_checkpoint(step=run.state.global_step, uri=uri or str(path))


def _preempt(run: Run, train_time: float) -> str:
    st = run.state
    st.train_time_s = train_time
    grace = run.cfg.preemption_grace_seconds
    what = "interrupted (SIGINT)" if run.preemption.interrupted else "preemption signal"
    logger.warning("%s: checkpointing at step %d (%.0fs of grace left)", what, st.global_step,
                   run.preemption.remaining(grace))
    if run.checkpointer.last_saved_step != st.global_step:  # this step may already be saved
        save_checkpoint(run)
    try:
        run.checkpointer.wait_uploads(max(1.0, run.preemption.remaining(grace)))
    except Exception as e:  # noqa: BLE001 - the local checkpoint is complete; requeue must still happen
        logger.error("preemption: upload not finished within the grace period (%s); the local checkpoint "
                     "is complete and auto-resume will use it", e)
    if run.accelerator.is_main_process and not run.preemption.interrupted:  # Ctrl-C: no requeue
        write_marker(run.cfg.output_dir, st.global_step)
    if run.accelerator.is_main_process:
        print(f"{what}: stopped at step {st.global_step}; checkpoint "
              f"{run.checkpointer.root / step_name(st.global_step)}; continue with --resume_from_checkpoint auto",
              file=sys.stderr, flush=True)
    run.accelerator.wait_for_everyone()
    return INTERRUPTED if run.preemption.interrupted else PREEMPTED




def steps_per_epoch(batches_per_epoch: int, accumulation: int) -> int:
    return max(1, batches_per_epoch // accumulation)


def total_steps(cfg: Any, batches_per_epoch: int) -> tuple[int, int]:
    """(optimizer steps, epochs): max_train_steps wins over num_train_epochs, as in run_qa_no_trainer."""
    per_epoch = steps_per_epoch(batches_per_epoch, cfg.gradient_accumulation_steps)
    if cfg.max_train_steps is not None:
        return cfg.max_train_steps, math.ceil(cfg.max_train_steps / per_epoch)
    return math.ceil(cfg.num_train_epochs * per_epoch), math.ceil(cfg.num_train_epochs)
