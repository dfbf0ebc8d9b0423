"""Checkpoints: save (all ranks), mark complete, rotate, upload (rank 0, background), resume.

Layout: ``output_dir/checkpoints/step_NNNNNNN/`` holds Accelerate/DeepSpeed state, ``trainer_state.json``
(counters, data-order seed, world size, tracker run id), ``config.yaml`` and, written last, ``COMPLETE``.
In the store (``s3_uri``: S3 or a shared filesystem) the same files live under
``<s3_uri>/<run_name>/checkpoints/step_NNNNNNN/`` and a checkpoint exists for readers only once its
``manifest.json`` is there (see qa.checkpoint.store). ``save_total_limit`` applies to both copies.
Multi-node runs need ``output_dir`` on a filesystem all nodes share: DeepSpeed writes each rank's shards
locally and rank 0 uploads the directory."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from accelerate.utils import gather_object
from accelerate.utils.constants import MODEL_NAME

from qa.checkpoint.reshard import (
    check_global_batch,
    repair_optimizer_after_universal_load,
    universal_copy,
    zero_state_dirs,
)
from qa.checkpoint.rotation import checkpoints_to_delete, crash_leftovers, newest_first
from qa.checkpoint.state import (
    BATCH_SPLIT_KEYS,
    COMPLETE,
    STATE_FILE,
    TrainState,
    complete_checkpoints,
    data_order_key,
    step_name,
)
from qa.checkpoint.store import StorageError, Store, open_store
from qa.checkpoint.uploader import BackgroundUploader
from qa.config import TrainConfig, save_config
from qa.distributed.rank_zero import on_rank_zero
from qa.errors import ConfigError

logger = logging.getLogger(__name__)


class Checkpointer:
    """Owns the local checkpoint directory and, on rank 0, the store and its background uploader.

    Only :meth:`save`, :meth:`resolve` and :meth:`load` need the accelerator; :meth:`publish` and
    :meth:`find_resume` are rank 0's share of them and work without one; :meth:`check_resume` and
    :meth:`needs_reshard` read only its number of processes.
    """

    def __init__(self, cfg: TrainConfig, accelerator: Any, store: Store | None = None,
                 uploader: BackgroundUploader | None = None) -> None:
        self.cfg = cfg
        self.accelerator = accelerator
        self.root = Path(cfg.output_dir) / "checkpoints"
        self.store = store
        self.uploader = uploader
        self.run_prefix = cfg.resolved_run_name
        self.store_prefix = f"{self.run_prefix}/checkpoints"  # this run's checkpoints in the store
        self.resumed_from: str | None = None  # name of this run's checkpoint we resumed from: never rotated away
        self.last_save_s: float | None = None
        self.last_saved_step: int | None = None

    # -- store naming ---------------------------------------------------------------------------------------
    def s3_uri_for(self, rel: str) -> str | None:
        """URI in the store of ``rel`` (relative to this run), None without a store."""
        if self.store is None:
            return None
        return self.store.uri_for(f"{self.run_prefix}/{rel}")

    def _checkpoint_uri(self, name: str) -> str | None:
        return self.s3_uri_for(f"checkpoints/{name}")

    # -- save -----------------------------------------------------------------------------------------------
    def save(self, state: TrainState, *, export: Any | None = None) -> Path:
        """Collective: every rank calls it. Returns the checkpoint directory."""
        t0 = time.perf_counter()
        acc = self.accelerator
        path = self.root / step_name(state.global_step)
        if acc.is_main_process and path.exists():
            # A crash mid-save left a partial directory for this step; never mix old and new shards.
            shutil.rmtree(path)
        acc.wait_for_everyone()
        acc.save_state(str(path))
        if export is not None:
            export(path / "model")
        if acc.is_main_process:
            (path / STATE_FILE).write_text(state.to_json())
            save_config(self.cfg, path / "config.yaml")
        acc.wait_for_everyone()
        if acc.is_main_process:
            (path / COMPLETE).write_text(f"{state.global_step}\n")
            self.publish(path, state)
        acc.wait_for_everyone()
        self.last_save_s = time.perf_counter() - t0
        logger.info("checkpoint %s saved in %.2fs", path, self.last_save_s)
        return path

    def publish(self, path: Path, state: TrainState) -> None:
        """Rank 0, once ``path`` is complete: rotate local checkpoints and queue the upload, after which the
        uploader's thread rotates the store (training never waits for either the upload or the deletions)."""
        self._rotate_local()
        if self.uploader is not None:
            self.uploader.submit(str(path), f"{self.store_prefix}/{path.name}",
                                 metadata={"global_step": state.global_step, "epoch": state.epoch},
                                 then=self._rotate_store)

    def _pending_names(self, names: list[str]) -> set[str]:
        """Which of these checkpoints still wait for their upload."""
        if self.uploader is None:
            return set()
        pending = set(self.uploader.pending())
        return {name for name in names if self._checkpoint_uri(name) in pending}

    def _rotate_local(self) -> None:
        if self.cfg.save_total_limit is None:
            return
        done = [p.name for p in complete_checkpoints(self.root)]
        # A checkpoint still waiting for its upload is kept: deleting it would lose it in the store too.
        for name in checkpoints_to_delete(done, self.cfg.save_total_limit, self._pending_names(done)):
            shutil.rmtree(self.root / name, ignore_errors=True)
        incomplete = [p.name for p in self.root.glob("step_*") if not (p / COMPLETE).exists()]
        for name in crash_leftovers(incomplete, done[-1] if done else None):
            shutil.rmtree(self.root / name, ignore_errors=True)

    def _rotate_store(self) -> None:
        """On the uploader's thread, after a checkpoint's manifest landed: delete older ones beyond the limit."""
        limit = self.cfg.save_total_limit
        if self.store is None or limit is None:
            return
        names = self.store.list_complete(self.store_prefix)
        protected = self._pending_names(names)
        if self.resumed_from is not None:
            protected.add(self.resumed_from)
        for name in checkpoints_to_delete(names, limit, protected):
            self.store.delete_prefix(f"{self.store_prefix}/{name}")  # manifest first
            logger.info("deleted %s from the store (save_total_limit %d)", self._checkpoint_uri(name), limit)

    def upload_final(self, final_dir: Path) -> None:
        if self.uploader is not None and self.accelerator.is_main_process:
            self.uploader.submit(str(final_dir), f"{self.run_prefix}/final")

    def wait_uploads(self, timeout_s: float) -> None:
        if self.uploader is not None and self.accelerator.is_main_process:
            self.uploader.wait(timeout_s)

    # -- resume ---------------------------------------------------------------------------------------------
    def resolve(self, spec: str | None) -> Path | None:
        """Find (and fetch from the store if needed) the checkpoint to resume from. Collective; same answer on
        all ranks."""
        if spec is None:
            return None

        def find() -> str | None:
            try:
                found = self.find_resume(spec)
            except (ConfigError, StorageError, OSError) as e:  # the user's target, not a bug: one line, exit 2
                raise ConfigError(f"resume_from_checkpoint: {e}") from None
            return str(found) if found is not None else None

        value = on_rank_zero(self.accelerator, find)
        return Path(value) if value is not None else None

    def find_resume(self, spec: str) -> Path | None:
        """Rank 0's part of :meth:`resolve` (no collective): the local checkpoint directory to resume from.

        ``auto``: the newest complete local checkpoint, else the newest one in the store that downloads intact.
        ``s3://...`` or ``file://...``: that checkpoint of a store, downloaded. Else a local directory."""
        found = self._find_resume(spec)
        if found is not None and found.parent.resolve() == self.root.resolve():
            self.resumed_from = found.name
        return found

    def _find_resume(self, spec: str) -> Path | None:
        if spec == "auto":
            local = complete_checkpoints(self.root)
            if local:
                return local[-1]
            if self.store is None:
                logger.info("resume_from_checkpoint=auto: no complete checkpoint yet; starting fresh")
                return None
            return self._fetch_newest_from_store()
        if spec.startswith(("s3://", "file://")):
            return self._fetch_uri(spec)
        p = Path(spec)
        if not (p / COMPLETE).is_file():
            raise ConfigError(f"{p} is not a complete checkpoint (no {COMPLETE} marker)")
        return p

    def _fetch_newest_from_store(self) -> Path | None:
        assert self.store is not None
        # Newest first; a corrupted object makes us fall back to the previous checkpoint.
        for name in newest_first(self.store.list_complete(self.store_prefix)):
            dest = self.root / name
            shutil.rmtree(dest, ignore_errors=True)  # an incomplete local copy is never trusted
            try:
                self.store.download_dir(f"{self.store_prefix}/{name}", str(dest))
            except StorageError as e:
                logger.error("refusing checkpoint %s: %s; trying the previous one", name, e)
                shutil.rmtree(dest, ignore_errors=True)
                continue
            if not (dest / COMPLETE).is_file():
                logger.error("checkpoint %s from the store has no %s marker; trying the previous one", name,
                             COMPLETE)
                continue
            logger.info("resuming from %s (downloaded from the store)", self._checkpoint_uri(name))
            return dest
        logger.info("resume_from_checkpoint=auto: nothing local or in the store; starting fresh")
        return None

    def _fetch_uri(self, uri: str) -> Path:
        location, _, name = uri.rstrip("/").rpartition("/")
        try:
            store = open_store(location)
        except ValueError as e:
            raise ConfigError(f"{uri} is not a checkpoint in a store: {e}") from e
        dest = self.root / name
        shutil.rmtree(dest, ignore_errors=True)
        store.download_dir(name, str(dest))
        if not (dest / COMPLETE).is_file():
            raise ConfigError(f"{uri} has no {COMPLETE} marker")
        return dest

    def check_resume(self, path: Path) -> TrainState:
        """The counters saved in ``path``, once checked against this run: ConfigError (one line naming the
        setting) if the data order or the global batch differ. Every rank reads the same file and decides alike."""
        saved = TrainState.from_file(path / STATE_FILE)
        if self.cfg.resume_weights_only:
            return saved  # a new schedule from the weights: any data order, batch or world size
        world = self.accelerator.num_processes
        now = data_order_key(self.cfg, world)
        if saved.data_order:
            # The saved position counts global batches of one global batch order; how a global batch is split over
            # ranks and accumulation does not change that order (qa.data.sampler.StepBatchSampler).
            ignore = {*BATCH_SPLIT_KEYS, "global_batch_size"}
            diff = {k: (saved.data_order.get(k), v) for k, v in now.items()
                    if k not in ignore and saved.data_order.get(k) != v}
            if diff:
                raise ConfigError(f"checkpoint {path} was saved with a different data order: {diff} (saved, now); "
                                  "restore those values, or set resume_weights_only: true")
        if saved.global_batch_size is not None:
            order = saved.data_order or {}
            split = (f"{order.get('per_device_train_batch_size')} per device x {saved.world_size} process(es) x "
                     f"{order.get('gradient_accumulation_steps')} accumulation")
            check_global_batch(saved.global_batch_size, per_device=self.cfg.per_device_train_batch_size,
                               world_size=world, accumulation=self.cfg.gradient_accumulation_steps,
                               saved_split=split, where=f"checkpoint {path}")
        return saved

    def needs_reshard(self, path: Path) -> bool:
        """Whether ``path`` holds ZeRO state partitioned for another world size, to load as a universal checkpoint
        (the DeepSpeed engine must be created with ``"checkpoint": {"load_universal": true}`` for that)."""
        if self.cfg.resume_weights_only or not self._is_deepspeed():
            return False
        saved = TrainState.from_file(path / STATE_FILE)
        return saved.world_size != self.accelerator.num_processes and bool(zero_state_dirs(path))

    def load(self, path: Path, state: TrainState) -> TrainState:
        """Collective: restore Accelerate/DeepSpeed state and return the saved counters.

        Same world size: everything as saved, RNG included (bit-exact). Another world size with the same global
        batch: model, optimizer and schedule re-sharded, the data position kept (qa.checkpoint.reshard)."""
        saved = self.check_resume(path)
        world = self.accelerator.num_processes
        if self.cfg.resume_weights_only:
            # Model weights only: optimizer, schedule and data position start fresh; any world size works.
            if self._is_deepspeed():
                # Without the two flags ZeRO-3 silently keeps its initial weights.
                self.accelerator.load_state(str(path), load_module_only=True, load_optimizer_states=False,
                                            load_lr_scheduler_states=False)
            else:
                self._load_model_only(path)
            self.accelerator.step = 0  # accumulation counting starts afresh with the new schedule
            logger.info("loaded weights only from %s (saved on %d ranks, now %d)", path, saved.world_size, world)
            state.tracker_run_id = saved.tracker_run_id
            return state
        t0 = time.perf_counter()
        if self.needs_reshard(path):
            self._load_resharded(path, saved)
        else:
            # Without ZeRO every rank holds (and rank 0 saved) the whole model and optimizer: any world size loads.
            self.accelerator.load_state(str(path))
        # Accelerate's micro-batch count within the epoch decides when gradients sync; the RNG file restored the
        # saving run's count, which only fits its own split of the global batch. Checkpoints are taken at step
        # boundaries, so this is the same number when the split did not change.
        self.accelerator.step = saved.steps_in_epoch * self.cfg.gradient_accumulation_steps
        logger.info("resumed from %s at step %d (epoch %d, %d global batches in); saved on %d rank(s), now %d; "
                    "state loaded in %.2fs", path, saved.global_step, saved.epoch, saved.steps_in_epoch,
                    saved.world_size, world, time.perf_counter() - t0)
        return saved

    def _load_resharded(self, path: Path, saved: TrainState) -> None:
        """Collective: each node's first process converts ``path`` to a universal checkpoint in a scratch directory
        of its own (correct whether ``output_dir`` is shared by the nodes or not), then every rank loads it."""
        acc = self.accelerator
        node = acc.process_index - acc.local_process_index  # the node's first global rank: one name per node
        scratch = self.root / f".universal-{path.name}-{node}"
        t0 = time.perf_counter()
        error = None
        if acc.is_local_main_process:
            shutil.rmtree(scratch, ignore_errors=True)
            try:
                universal_copy(path, scratch)
            except Exception as e:  # noqa: BLE001 - every rank must hear of it, or the others wait forever
                error = f"{type(e).__name__}: {e}"
        errors = [e for e in gather_object([error]) if e] if acc.num_processes > 1 else [e for e in [error] if e]
        if errors:
            raise RuntimeError(f"converting {path} (saved on {saved.world_size} ranks) to a universal checkpoint "
                               f"failed: {errors[0]}")
        converted = time.perf_counter() - t0
        try:
            acc.load_state(str(scratch))
            # Accelerate keeps the (one) DeepSpeed engine's state in MODEL_NAME.
            repair_optimizer_after_universal_load(acc.deepspeed_engine_wrapped.engine, scratch / MODEL_NAME)
        finally:
            acc.wait_for_everyone()
            if acc.is_local_main_process:
                shutil.rmtree(scratch, ignore_errors=True)  # only needed for this load
        logger.info("re-sharded %s from %d to %d ranks: converted in %.2fs, loaded in %.2fs (RNG streams are "
                    "per rank and restart from the seed)", path, saved.world_size, acc.num_processes, converted,
                    time.perf_counter() - t0 - converted)

    def _is_deepspeed(self) -> bool:
        return getattr(self.accelerator.state, "deepspeed_plugin", None) is not None

    def _load_model_only(self, path: Path) -> None:
        from safetensors.torch import load_file

        files = sorted(path.glob("model*.safetensors"))
        if not files:
            raise ConfigError(f"{path}: no model weights found")
        model = self.accelerator.unwrap_model(self.accelerator._models[0], keep_torch_compile=False)
        state: dict[str, Any] = {}
        for f in files:
            # save_state stores the wrapped model's keys (DDP's "module.", torch.compile's "_orig_mod.").
            for k, v in load_file(str(f)).items():
                state[k.removeprefix("module.").replace("_orig_mod.", "")] = v
        model.load_state_dict(state, strict=True)  # a silent partial load would look like a resume
