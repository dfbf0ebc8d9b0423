"""The training loop: steps, logging, periodic evaluation and checkpoints, preemption.

:class:`Trainer` holds the typed parts set-up built (``qa.trainer.parts``) and the loop's own config section;
when to log, evaluate and checkpoint is decided by ``qa.schedule.events``, pure functions tested on their own.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from qa.checkpoint.state import step_name
from qa.config import Config
from qa.errors import UserError
from qa.lifecycle import startup
from qa.lifecycle.preemption import write_marker
from qa.model.loss import padding_invariant_qa_loss
from qa.schedule.events import CHECKPOINT, EVAL, LOG, epoch_events, step_events
from qa.trainer.evaluation import evaluate
from qa.trainer.export import export_model
from qa.trainer.parts import Data, Model, Session, StepPlan
from qa.trainer.perf import gpu_peak_tflops, model_shape, peak_memory_gb, train_flops

if TYPE_CHECKING:
    from accelerate import Accelerator

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


class Trainer:
    """Runs the optimizer steps of one run. Every method is collective: all ranks call it in step."""

    def __init__(self, session: Session, model: Model, data: Data, cfg: Config) -> None:
        assert model.plan is not None, "an evaluation-only model has nothing to train"
        self.session, self.model, self.data = session, model, data
        self.cfg = cfg
        self.plan: StepPlan = model.plan
        self._t_start = time.perf_counter()
        self._train_time_before = 0.0

    def _elapsed(self) -> float:
        return self._train_time_before + time.perf_counter() - self._t_start

    def train(self) -> str:
        """Train from ``session.state`` to the end (or until a signal). Returns COMPLETED, PREEMPTED or INTERRUPTED."""
        acc, st, plan = self.session.accelerator, self.session.state, self.plan
        schedule, do_eval = self.cfg.schedule, self.cfg.run.do_eval
        module = self.model.module
        meter = _Meter()
        shape = model_shape(acc.unwrap_model(module))
        dtype = "fp32" if self.session.precision == "no" else self.session.precision  # fp32 runs as TF32
        peak = gpu_peak_tflops(torch.cuda.get_device_name(), dtype) if torch.cuda.is_available() else None
        bar = tqdm(total=plan.total_steps, initial=st.global_step, desc="train",
                   disable=not acc.is_local_main_process)
        self._bar = bar
        self._t_start, self._train_time_before = time.perf_counter(), st.train_time_s
        while st.epoch < plan.num_epochs and st.global_step < plan.total_steps:
            self.model.train_loader.set_epoch(st.epoch)
            loader = self.model.train_loader
            if st.steps_in_epoch:
                # The saved position counts global batches; here each is `accumulation` micro-batches per rank
                # (whatever world size and split wrote the checkpoint).
                loader = acc.skip_first_batches(self.model.train_loader, st.steps_in_epoch * plan.accumulation)
            module.train()
            for batch in loader:
                loss, grad_norm = self._micro_step(batch)
                meter.add(loss, batch)
                if not acc.sync_gradients:
                    continue
                st.global_step += 1
                st.steps_in_epoch += 1
                startup.first_step()  # logs the start-up timeline once
                if acc.optimizer_step_was_skipped:
                    st.skipped_steps += 1
                bar.update(1)
                events = step_events(st.global_step, plan.total_steps, schedule, do_eval=do_eval)
                if LOG in events:
                    self._log_train(meter, grad_norm, shape, peak)
                if EVAL in events:
                    self.evaluate()
                if CHECKPOINT in events:
                    st.train_time_s = self._elapsed()
                    self.save_checkpoint()
                if self.session.preemption.should_stop(acc):
                    return self._preempt()
                if st.global_step >= plan.total_steps:
                    break
            if st.steps_in_epoch >= plan.steps_per_epoch:  # the epoch ran to its end
                st.epoch += 1
                st.steps_in_epoch = 0
                at_end = epoch_events(st.epoch, plan.num_epochs, schedule, do_eval=do_eval)
                if CHECKPOINT in at_end:
                    st.train_time_s = self._elapsed()
                    self.save_checkpoint()
                if EVAL in at_end:
                    self.evaluate()
        if schedule.checkpointing_steps == "epoch" and self.session.checkpointer.last_saved_step != st.global_step:
            # max_train_steps ended the run inside an epoch (a run shorter than one epoch would keep nothing).
            st.train_time_s = self._elapsed()
            self.save_checkpoint()
        bar.close()
        st.train_time_s = self._elapsed()
        return COMPLETED

    def _micro_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward and backward of one micro-batch; the optimizer steps when Accelerate syncs gradients.
        Returns the loss and, on a syncing micro-batch, the gradient norm before clipping."""
        acc, module = self.session.accelerator, self.model.module
        optimizer, scheduler = self.model.optimizer, self.model.scheduler
        with acc.accumulate(module):
            out = module(**_model_inputs(batch, self.model.train_input_names))
            # HF heads take the softmax over pad positions too, so their loss changes with how far a batch is
            # padded; masking pads makes length grouping change nothing but speed.
            loss = padding_invariant_qa_loss(out.start_logits, out.end_logits, batch["attention_mask"],
                                             batch["start_positions"], batch["end_positions"])
            acc.backward(loss)
            grad_norm = None
            if acc.sync_gradients:
                grad_norm = acc.clip_grad_norm_(module.parameters(), self.cfg.optimizer.max_grad_norm)
            optimizer.step()
            if acc.sync_gradients and not acc.optimizer_step_was_skipped:
                scheduler.step()  # an fp16 overflow step must not eat warmup
            optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm

    def evaluate(self) -> None:
        if self.data.eval is not None:
            evaluate(self.session, self.model, self.data.eval, self.cfg, tag="eval")
        self.model.module.train()

    def save_checkpoint(self) -> None:
        export = None
        if self.cfg.checkpoint.export_every_checkpoint:
            def export(dest: Path) -> None:
                export_model(self.session.accelerator, self.model.module, self.data.tokenizer, dest)
        ckpt = self.session.checkpointer
        try:
            path = ckpt.save(self.session.state, export=export)
        except UserError:
            if getattr(self, "_bar", None) is not None:
                self._bar.close()  # the one-line error must start its own line, not follow the bar's
            raise
        if path is None:  # no room on disk, skipped (keep_training_when_disk_full)
            return
        uri = ckpt.checkpoint_uri(path.name)
        self.session.tracker.log_checkpoint(step=self.session.state.global_step, uri=uri or str(path))

    def _preempt(self) -> str:
        st, session = self.session.state, self.session
        st.train_time_s = self._elapsed()
        grace = self.cfg.preemption.preemption_grace_seconds
        interrupted = session.preemption.interrupted
        what = "interrupted (SIGINT)" if interrupted else "preemption signal"
        logger.warning("%s: checkpointing at step %d (%.0fs of grace left)", what, st.global_step,
                       session.preemption.remaining(grace))
        if session.checkpointer.last_saved_step != st.global_step:  # this step may already be saved
            self.save_checkpoint()
        try:
            session.checkpointer.wait_uploads(max(1.0, session.preemption.remaining(grace)))
        except Exception as e:  # noqa: BLE001 - the local checkpoint is complete; requeue must still happen
            logger.error("preemption: upload not finished within the grace period (%s); the local checkpoint "
                         "is complete and auto-resume will use it if every node has it", e)
        if session.accelerator.is_local_main_process:  # every node's disk: its launch script reads it
            write_marker(self.cfg.run.output_dir, st.global_step, interrupted=interrupted)  # Ctrl-C: no requeue
        if session.accelerator.is_main_process:
            print(f"{what}: stopped at step {st.global_step}; checkpoint "
                  f"{session.checkpointer.root / step_name(st.global_step)}; continue with "
                  "--resume_from_checkpoint auto", file=sys.stderr, flush=True)
        session.accelerator.wait_for_everyone()
        return INTERRUPTED if interrupted else PREEMPTED

    def _log_train(self, meter: _Meter, grad_norm: torch.Tensor | float | None, shape: tuple[int, int, int],
                   peak: float | None) -> None:
        acc, st = self.session.accelerator, self.session.state
        dt = max(time.perf_counter() - meter.t0, 1e-9)
        local = meter.sums if isinstance(meter.sums, torch.Tensor) else torch.zeros(5, dtype=torch.float64,
                                                                                     device=acc.device)
        tot = acc.reduce(local, reduction="sum") if acc.num_processes > 1 else local
        loss_sum, loss_count, samples, tokens, padded = tot.tolist()
        st.samples_seen += int(samples)
        st.tokens_seen += int(tokens)
        metrics: dict[str, float] = {
            "train/loss": loss_sum / max(loss_count, 1),
            "train/lr": float(self.model.scheduler.get_last_lr()[0]),
            "train/epoch": st.epoch + st.steps_in_epoch / max(self.plan.steps_per_epoch, 1),
            "train/skipped_steps": float(st.skipped_steps),
            "perf/samples_per_s": samples / dt,
            "perf/tokens_per_s": tokens / dt,
            "perf/padding_fraction": 1.0 - tokens / max(padded, 1),
        }
        if grad_norm is not None:
            metrics["train/grad_norm"] = float(grad_norm)
        scale = loss_scale(self.model, self.session.accelerator, self.session.precision)
        if scale is not None:
            metrics["train/loss_scale"] = scale
        if peak is not None and samples:
            # Useful FLOPs (real tokens, mean real length per window), per GPU, as bench/train_throughput.py.
            flops = samples * train_flops(np.array([tokens / samples]), *shape)
            metrics["perf/mfu"] = flops / dt / acc.num_processes / (peak * 1e12)
        mem = peak_memory_gb()
        if mem is not None:
            metrics["perf/peak_mem_gb"] = mem
        self.session.tracker.log(metrics, step=st.global_step)
        meter.reset()


def loss_scale(model: Model, accelerator: Accelerator, precision: str) -> float | None:
    """The fp16 dynamic loss scale, from DeepSpeed's optimizer or Accelerate's GradScaler."""
    if precision != "fp16":
        return None
    opt = getattr(model.module, "optimizer", None)  # DeepSpeed engine
    for obj in (opt, getattr(opt, "loss_scaler", None)):
        for attr in ("cur_scale", "loss_scale"):
            val = getattr(obj, attr, None)
            if isinstance(val, int | float):
                return float(val)
    scaler = getattr(accelerator, "scaler", None)
    return float(scaler.get_scale()) if scaler is not None else None
