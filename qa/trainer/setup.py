"""Setting up a run: the steps ``train.py`` calls, each one small, in the order they happen.

Each step builds one typed part (``qa.trainer.parts``) complete from the config (``qa.config.Config``): the
trainer is where the config is handed out; each component below takes its own section and the run-level values it
needs as explicit arguments. Every step here is collective: every rank calls it, in the same order. User errors
(config, data, resume target, storage) surface before the output directory, the tracker or W&B are touched.
"""

from __future__ import annotations

import inspect
import logging
import pickle
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding

from qa.checkpoint.disk import DiskError, describe_write_error, estimate_checkpoint_bytes, is_write_failure
from qa.checkpoint.manager import Checkpointer
from qa.checkpoint.output_dir import abandon, check_resume_target, claim_output_dir, release
from qa.checkpoint.settings import StorageSettings
from qa.checkpoint.state import TrainState
from qa.config import Config
from qa.config.load import config_yaml as save_config_text
from qa.data.sampler import StepBatchSampler
from qa.distributed.accelerator import build_accelerator, load_deepspeed_config
from qa.distributed.precision import machine_precision
from qa.distributed.rank_zero import on_rank_zero
from qa.errors import ConfigError, UserError
from qa.lifecycle import startup
from qa.lifecycle.preemption import PreemptionHandler, clear_marker
from qa.model.build import load_model
from qa.model.checks import check_model
from qa.model.optim import build_optimizer, build_scheduler
from qa.model.settings import ModelSettings
from qa.preflight.config_checks import output_dir_use
from qa.tracking.tracker import RUN_ID_FILENAME
from qa.trainer.export import export_model
from qa.trainer.inputs import check_data
from qa.trainer.parts import Data, Model, Session, StepPlan

if TYPE_CHECKING:
    from qa.checkpoint.store import Store
    from qa.checkpoint.uploader import BackgroundUploader

logger = logging.getLogger("qa")
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


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


def _threads() -> str:
    return startup.threads.describe() if startup.threads is not None else "threads as torch chose"


def connect(cfg: Config) -> Accelerator:
    """Accelerator, logging and seed, then the input checks that need no features: the data files and the model
    and tokenizer (qa.model.checks: config, weight shapes, vocabulary, special tokens; no weights loaded).
    Nothing is written yet.

    Collective: every rank calls it.
    """
    from qa.tracking.tracker import log_with_for

    # Every rank, before the Accelerator: under ZeRO-3 it makes transformers build any model (the meta-device one
    # the weight check compares against) inside deepspeed.zero.Init, a collective rank 0 alone would hang in.
    check_model(cfg.model)  # missing, offline, no tokenizer, wrong vocab or weights; the same on every rank
    accelerator = build_accelerator(cfg.distributed, cfg.optimizer, cfg.batch, output_dir=cfg.run.output_dir,
                                    log_with=log_with_for(cfg.tracking.report_to))
    _setup_logging(accelerator.is_main_process)
    set_seed(cfg.run.seed)
    choice = machine_precision(cfg.distributed.mixed_precision)
    logger.info("precision: %s; %s", choice.describe(), _threads())  # check_launch warned if it will be slow
    on_rank_zero(accelerator, lambda: check_data(cfg))  # bad data fails here, before anything is written
    return accelerator


def planned_steps(cfg: Config, acc: Accelerator, data: Data) -> int | None:
    """The run's optimizer steps, as build_model will plan them (whole global batches per epoch)."""
    if data.train is None:
        return None
    return cfg.schedule.total_steps(len(data.train) // cfg.batch.global_batch(acc.num_processes))[0]


def start(cfg: Config, accelerator: Accelerator, store: Store | None,
          total_steps: int | None = None) -> Session | None:
    """Output_dir claim, storage, checkpoint to resume from, then the tracker: after every input check
    (``connect``, ``prepare_data``, ``load_weights``). None: the checkpoint to resume is the end of a finished run
    (``total_steps`` reached, final/ exported); that is said once and nothing is changed.

    Collective: every rank calls it.
    """
    from qa.tracking.tracker import Tracker

    run = cfg.run
    choice = machine_precision(cfg.distributed.mixed_precision)
    precision, threads = choice.precision, _threads()
    claim_output_dir(output_dir_use(cfg), accelerator)  # first write: refuse another run's or a live run's dir
    config_yaml = save_config_text(cfg)
    try:
        uploader = _uploader(store, cfg.storage, accelerator)
        checkpointer = build_checkpointer(cfg, accelerator, store, uploader, config_yaml=config_yaml)
        resume_path = checkpointer.resolve(cfg.checkpoint.resume_from_checkpoint)
        check_resume_target(cfg.schedule.max_train_steps, resume_path, accelerator)  # not past max_train_steps
        # A checkpoint this run cannot continue (data order, global batch) fails here, before anything is written.
        saved = on_rank_zero(accelerator, lambda: checkpointer.check_resume(resume_path)) if resume_path else None
    except UserError:
        if accelerator.is_main_process:
            abandon(run.output_dir)  # a refused start leaves output_dir as it found it
        raise
    if saved is not None and already_finished(saved.global_step, total_steps, Path(run.output_dir)):
        if accelerator.is_main_process:
            print(f"resume_from_checkpoint: the run in {run.output_dir} already finished at step {saved.global_step} "
                  f"(final/ is exported); nothing was changed. To train further, raise --max_train_steps or "
                  "--num_train_epochs", file=sys.stderr, flush=True)
            release(run.output_dir)  # the lock file stays, as every finished run leaves it
        return None
    stored_run_id = None
    state = TrainState(seed=run.seed, world_size=accelerator.num_processes,
                       data_order=cfg.data_order.key(accelerator.num_processes))
    if saved is not None:
        state.tracker_run_id = saved.tracker_run_id
    elif cfg.checkpoint.resume_from_checkpoint is not None and accelerator.is_main_process:
        stored_run_id = checkpointer.stored_run_id()  # nothing to resume: the run may have lost its disk
    if accelerator.is_local_main_process:  # every node's own output_dir (they need not share a filesystem)
        Path(run.output_dir).mkdir(parents=True, exist_ok=True)
        clear_marker(run.output_dir)
    if accelerator.is_main_process:
        (Path(run.output_dir) / "run_config.yaml").write_text(config_yaml)
    tracker = Tracker.from_settings(
        accelerator, cfg.tracking, output_dir=run.output_dir, run_name=run.resolved_run_name,
        group=cfg.resolved_wandb_group, config=cfg.to_dict(), resume_run_id=state.tracker_run_id,
        stored_run_id=stored_run_id, resume_step=saved.global_step if saved is not None else 0,
        console=tqdm.write,  # lines land above the progress bars instead of glued to them
        facts={"precision": {"chosen": choice.name, "reason": choice.reason}, "threads_per_rank": threads},
    )
    if tracker.run_id != stored_run_id:
        checkpointer.record_run_id(tracker.run_id)
    state.tracker_run_id = tracker.run_id
    return Session(accelerator=accelerator, precision=precision, tracker=tracker, checkpointer=checkpointer,
                   preemption=PreemptionHandler().install(), state=state, resume_path=resume_path)


def already_finished(step: int, total_steps: int | None, output_dir: Path) -> bool:
    """A resume at the run's last step, with final/ there: evaluating and exporting again would only rewrite
    what the run already wrote. Without final/ (a crash after the last save) the run still has to finish."""
    return total_steps is not None and step >= total_steps and (output_dir / "final").is_dir()


def build_checkpointer(cfg: Config, accelerator: Accelerator | None, store: Store | None = None,
                       uploader: BackgroundUploader | None = None, *, config_yaml: str = "") -> Checkpointer:
    """The run's checkpointer: its section plus the run-level values it needs. Collective with several ranks."""
    return Checkpointer(cfg.checkpoint, accelerator, store, uploader, output_dir=Path(cfg.run.output_dir),
                        run_name=cfg.run.resolved_run_name, data_order=cfg.data_order, config_yaml=config_yaml)


def open_storage(settings: StorageSettings, accelerator: Accelerator) -> Store | None:
    """The store, checked by rank 0 and then by every other node: bad credentials or a missing bucket fail here,
    before any data work and before anything is written.

    Collective: every rank calls it.
    """
    if settings.store_uri is None:
        return None
    from qa.checkpoint.backends import open_store
    from qa.checkpoint.store import StorageError

    try:
        store = open_store(settings.store_uri, sse=settings.s3_sse, sse_kms_key_id=settings.s3_sse_kms_key_id,
                           create_bucket=settings.s3_create_bucket)
    except ValueError as e:  # the config checks should have caught it; still a user's value, not a bug
        raise ConfigError(f"s3_uri: {e}") from None

    def check() -> None:
        try:
            store.check()
        except StorageError as e:
            raise ConfigError(f"s3_uri: {e}") from None

    on_rank_zero(accelerator, check)
    if accelerator.num_processes > 1:
        # Every node uploads its own ranks' part of each checkpoint: its credentials must work too.
        mine = None
        if accelerator.is_local_main_process and not accelerator.is_main_process:
            try:
                store.check()
            except StorageError as e:
                mine = f"on the node of rank {accelerator.process_index}: {e}"
        problems = [p for p in gather_object([mine]) if p]
        if problems:
            error = ConfigError(f"s3_uri: {'; '.join(problems)}")
            error.reported_by_rank_zero = not accelerator.is_main_process  # type: ignore[attr-defined]
            raise error
    return store


def _uploader(store: Store | None, settings: StorageSettings, accelerator: Accelerator) -> BackgroundUploader | None:
    """Each node publishes its own ranks' checkpoint files (qa.checkpoint.parts): one uploader per node."""
    if store is None or not accelerator.is_local_main_process:
        return None
    from qa.checkpoint.uploader import BackgroundUploader

    return BackgroundUploader(store, deadline_s=settings.s3_upload_timeout)


def load_weights(settings: ModelSettings, session: Session, output_dir: str) -> torch.nn.Module:
    """from_pretrained, after the claim (under ZeRO-3 it partitions inside deepspeed.zero.Init, which must follow
    the collectives of ``start``). Weights that cannot be read (a truncated or damaged file; qa.model.checks has
    already compared names and shapes) are a one-line ConfigError, and what this run wrote is removed first.

    Collective: every rank calls it.
    """
    try:
        return load_model(settings)
    # torch.load refuses a damaged .bin with an UnpicklingError (or EOFError when it is cut short), safetensors
    # with a ValueError/OSError: all of them the user's file, not our bug.
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        _undo_start(session, output_dir)
        raise ConfigError(f"model_name_or_path: the weights of {settings.model_name_or_path} cannot be loaded: "
                          f"{first}") from None


def _undo_start(session: Session, output_dir: str) -> None:
    """The tracker closed and, for a fresh run, what start() wrote gone: run_config.yaml, metrics.jsonl, the
    tracker's run id and the lock (a resumed run's directory keeps what its earlier runs wrote)."""
    session.tracker.finish()
    session.preemption.uninstall()
    if session.accelerator.is_main_process and session.resume_path is None:
        for name in ("run_config.yaml", "metrics.jsonl", RUN_ID_FILENAME):
            (Path(output_dir) / name).unlink(missing_ok=True)
        abandon(output_dir)


def build_model(cfg: Config, session: Session, data: Data, model: torch.nn.Module) -> Model:
    """Optimizer, schedule and train loader for ``model`` (``load_weights``), prepared together (DeepSpeed
    needs them at once).

    Collective: every rank calls it.
    """
    acc = session.accelerator
    batch = cfg.batch
    accepted = set(inspect.signature(model.forward).parameters)
    # pad_to_multiple_of=8: tensor-core friendly shapes at almost no padding cost.
    collator = DataCollatorWithPadding(data.tokenizer, pad_to_multiple_of=8)
    eval_names = [k for k in MODEL_INPUTS if k in accepted
                  and (data.eval is None or k in data.eval.features.column_names)]
    if not cfg.run.do_train:
        # Inference needs no optimizer sharding: below ZeRO-3 each rank holds the plain model; under ZeRO-3
        # DeepSpeed partitions the weights (its engine runs without an optimizer).
        if acc.state.deepspeed_plugin is not None and acc.state.deepspeed_plugin.zero_stage >= 3:
            return Model(module=acc.prepare(model), collator=collator, eval_input_names=eval_names)
        return Model(module=model.to(acc.device), collator=collator, eval_input_names=eval_names)
    feats = data.train
    assert feats is not None
    # Labels stay out of the forward call: the loop computes a padding-invariant loss from the logits.
    train_names = [k for k in MODEL_INPUTS if k in accepted and k in feats.column_names]
    keep = [c for c in feats.column_names if c in train_names or c.endswith("_positions")]
    micro, accumulation = batch.per_device_train_batch_size, batch.gradient_accumulation_steps
    sampler = StepBatchSampler(np.asarray(feats["length"]), micro, acc.num_processes, accumulation,
                               seed=cfg.run.seed, group_by_length=batch.group_by_length)
    loader = torch.utils.data.DataLoader(
        feats.select_columns(keep), batch_sampler=sampler, collate_fn=collator,
        num_workers=cfg.data.dataloader_num_workers, pin_memory=torch.cuda.is_available(), persistent_workers=False,
        # Its own generator keeps the global RNG (dropout) untouched by loader start-up, which exact
        # resume relies on.
        generator=torch.Generator().manual_seed(cfg.run.seed),
    )
    batches_per_epoch = len(sampler) // acc.num_processes
    steps, epochs = cfg.schedule.total_steps(batches_per_epoch // accumulation)
    ds_config = load_deepspeed_config(cfg.distributed, cfg.optimizer, batch, world_size=acc.num_processes,
                                      precision=session.precision, num_training_steps=steps)
    if ds_config is not None:
        if session.resume_path is not None and session.checkpointer.needs_reshard(session.resume_path):
            # ZeRO state saved on another world size loads as a universal checkpoint (qa.checkpoint.reshard); the
            # engine reads this switch when it loads.
            ds_config["checkpoint"] = {**ds_config.get("checkpoint", {}), "load_universal": True}
        acc.state.deepspeed_plugin.deepspeed_config.update(ds_config)
    # The first save's free-space check needs a size before any checkpoint exists (qa.checkpoint.disk).
    session.checkpointer.expected_bytes = estimate_checkpoint_bytes(
        sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()), deepspeed=ds_config is not None,
        mixed_precision=session.precision in ("fp16", "bf16"), export=cfg.checkpoint.export_every_checkpoint)
    optimizer = build_optimizer(cfg.optimizer, model, ds_config)
    scheduler = build_scheduler(cfg.optimizer, optimizer, steps, ds_config)
    if cfg.model.torch_compile:
        model = torch.compile(model)
    module, optimizer, loader, scheduler = acc.prepare(model, optimizer, loader, scheduler)
    logger.info("train: %d optimizer steps over %d epochs (%d micro-batches per rank per epoch)",
                steps, epochs, batches_per_epoch)
    return Model(module=module, collator=collator, eval_input_names=eval_names, train_input_names=train_names,
                 optimizer=optimizer, scheduler=scheduler, train_loader=loader, sampler=sampler,
                 plan=StepPlan(total_steps=steps, num_epochs=epochs, batches_per_epoch=batches_per_epoch,
                               accumulation=accumulation))


def resume(cfg: Config, session: Session) -> None:
    """Collective: restore model/optimizer/scheduler/RNG and the data position, if resuming."""
    if session.resume_path is None:
        return
    world = session.accelerator.num_processes
    session.state = session.checkpointer.load(session.resume_path, session.state)
    session.state.tracker_run_id = session.tracker.run_id
    session.state.data_order = cfg.data_order.key(world)
    session.state.world_size = world


def export(output_dir: Path, session: Session, model: Model, data: Data) -> Path:
    """Collective: save_pretrained + tokenizer to output_dir/final, then upload it in the background.

    Written to ``final.partial`` and renamed: a final/ exists only whole, since a restart takes it as the sign of a
    finished run (found by the fault campaign: a full disk mid-export left a final/ without weights, and every
    restart after it said "already finished")."""
    acc = session.accelerator
    final, partial = output_dir / "final", output_dir / "final.partial"
    if acc.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    # save_pretrained lists its directory on every rank: none may start before rank 0 has cleared it (found in a
    # 2-rank run, where rank 1 listed final.partial while rank 0 removed it).
    acc.wait_for_everyone()
    try:
        export_model(acc, model.module, data.tokenizer, partial)
    except BaseException as e:
        if not acc.is_main_process:
            raise
        shutil.rmtree(partial, ignore_errors=True)
        if not isinstance(e, Exception) or not is_write_failure(e):
            raise
        raise DiskError(f"export: writing {final} failed: {describe_write_error(e, output_dir)}; the partial "
                        "directory was removed and the newest checkpoint is intact: rerun with "
                        "--resume_from_checkpoint auto to export again") from None
    if acc.is_main_process:
        shutil.rmtree(final, ignore_errors=True)  # only a whole final/ from an earlier run could be there
        partial.rename(final)
    acc.wait_for_everyone()
    session.checkpointer.upload_final(final)
    if session.accelerator.is_main_process:
        logger.info("final model: %s", final)
    return final


def finish(storage: StorageSettings, session: Session, outcome: str) -> None:
    """Wait for uploads (bounded), write the summary, close the tracker."""
    st = session.state
    session.tracker.summary({
        "best/f1": st.best_f1, "best/exact_match": st.best_exact_match, **session.last_eval,
        "final/step": st.global_step, "train/total_time_s": st.train_time_s,
        "train/total_tokens": st.tokens_seen, "train/total_samples": st.samples_seen, "outcome": outcome,
    })
    error = None
    try:
        session.checkpointer.wait_uploads(storage.s3_upload_timeout)
    except Exception as e:  # noqa: BLE001 - reported after the tracker is closed
        error = e
    session.accelerator.wait_for_everyone()  # every node's uploads are over: what has no manifest never will
    if error is None:
        session.checkpointer.collect_leftovers()
    session.tracker.finish()
    session.preemption.uninstall()
    if error is not None:
        raise error
