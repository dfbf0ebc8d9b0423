"""Checkpoints: save (all ranks), mark complete, rotate, publish (every node, background), resume.

Layout: ``output_dir/checkpoints/step_NNNNNNN/`` holds Accelerate/DeepSpeed state, ``trainer_state.json``
(counters, data-order seed, world size, tracker run id), ``config.yaml`` and, once every rank's files are
written, ``COMPLETE``. Each rank writes to its own node's ``output_dir``; the nodes need not share a filesystem.
In the store (``s3_uri``: S3 or a shared filesystem) the same files live under
``<s3_uri>/<run_name>/checkpoints/step_NNNNNNN/``: each node uploads the files its ranks own, and the node of rank
0 writes ``manifest.json`` once every node's part is verified there (qa.checkpoint.parts); a checkpoint exists
for readers only with it. ``save_total_limit`` applies to both copies.

Resuming, the nodes agree on one checkpoint: their own copies if every node has a complete one, else the
newest in the store, of which each node fetches what its ranks read; if any node cannot, all of them try the
previous checkpoint together. Without a store, a multi-node run resumes only from copies every node has (a
shared ``output_dir``)."""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelerate.utils import gather_object

from qa.checkpoint.loading import load_model_only, load_resharded
from qa.checkpoint.parts import NodeLayout, PartUpload, fetch_part, layout_from_local_indices, usable_here
from qa.checkpoint.reshard import (
    check_global_batch,
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
from qa.files import atomic_write_text

logger = logging.getLogger(__name__)


def node_layout(accelerator: Any) -> NodeLayout:
    """Collective: every rank calls it. The ranks of this process's node, from every rank's local index."""
    if accelerator is None or accelerator.num_processes <= 1:
        return NodeLayout()
    try:
        return layout_from_local_indices(_gather(accelerator, accelerator.local_process_index),
                                         accelerator.process_index)
    except ValueError as e:  # the same on every rank: each one stops with this line
        raise ConfigError(f"{e}: launch with accelerate launch or torchrun, which number each node's ranks "
                          "contiguously") from None


def _gather(accelerator: Any, value: Any) -> list[Any]:
    """Collective: every rank calls it. ``value`` from every rank, in rank order."""
    if accelerator is None or accelerator.num_processes <= 1:
        return [value]
    return gather_object([value])


def _write_marker(path: Path, text: str) -> None:
    # Atomic: on a shared filesystem several nodes write the same marker, and a reader must never see it empty.
    atomic_write_text(path, text)


def check_resume(cfg: TrainConfig, world: int, path: Path) -> TrainState:
    """The counters saved in ``path``, once checked against this run: ConfigError (one line naming the
    setting) if the data order or the global batch differ. Every rank reads the same file and decides alike."""
    saved = TrainState.from_file(path / STATE_FILE)
    if cfg.resume_weights_only:
        return saved  # a new schedule from the weights: any data order, batch or world size
    now = data_order_key(cfg, world)
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
        check_global_batch(saved.global_batch_size, per_device=cfg.per_device_train_batch_size,
                           world_size=world, accumulation=cfg.gradient_accumulation_steps,
                           saved_split=split, where=f"checkpoint {path}")
    return saved


class Checkpointer:
    """Owns the local checkpoint directory and, on each node's local main process, the store's uploader.

    Only :meth:`save`, :meth:`resolve` and :meth:`load` need the accelerator; :meth:`publish` and
    :meth:`find_resume` are a node's share of them and work without one (a single process then plays every node);
    :meth:`check_resume` and :meth:`needs_reshard` read only its number of processes.
    """

    def __init__(self, cfg: TrainConfig, accelerator: Any, store: Store | None = None,
                 uploader: BackgroundUploader | None = None) -> None:
        """Collective when ``accelerator`` runs several processes (:func:`node_layout`)."""
        self.cfg = cfg
        self.accelerator = accelerator
        self.root = Path(cfg.output_dir) / "checkpoints"
        self.store = store
        self.uploader = uploader
        self.layout = node_layout(accelerator)
        self.run_prefix = cfg.resolved_run_name
        self.store_prefix = f"{self.run_prefix}/checkpoints"  # this run's checkpoints in the store
        self.resumed_from: str | None = None  # name of this run's checkpoint we resumed from: never rotated away
        self.last_save_s: float | None = None
        self.last_saved_step: int | None = None
        self._is_main = accelerator is None or accelerator.is_main_process

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
        if acc.is_local_main_process and path.exists():
            # A crash mid-save left a partial directory for this step; never mix old and new shards. Each node
            # clears its own disk (on a shared one, they race to clear the same directory: errors ignored).
            shutil.rmtree(path, ignore_errors=True)
            if (path / COMPLETE).exists():
                raise OSError(f"could not remove the earlier checkpoint {path}")
        acc.wait_for_everyone()
        acc.save_state(str(path))
        if export is not None:
            export(path / "model")
        if acc.is_main_process:
            (path / STATE_FILE).write_text(state.to_json())
            save_config(self.cfg, path / "config.yaml")
        acc.wait_for_everyone()
        pending, save_id = self._agree_on_publishing()
        if acc.is_local_main_process:
            # Every rank has written its files (this node's ranks to this disk): the checkpoint is complete here.
            _write_marker(path / COMPLETE, f"{state.global_step}\n")
            self.publish(path, state, protected=pending, save_id=save_id)
        acc.wait_for_everyone()
        self.last_save_s = time.perf_counter() - t0
        logger.info("checkpoint %s saved in %.2fs", path, self.last_save_s)
        return path

    def _agree_on_publishing(self) -> tuple[set[str], str]:
        """Collective: the checkpoints still uploading on any node (no node rotates them away: on a shared
        filesystem they are the other nodes' files too) and rank 0's id for this save (part records of an
        earlier save of the same step are never merged into this one)."""
        acc = self.accelerator
        mine = sorted(self._pending_names([p.name for p in self.root.glob("step_*")]))
        everyone = _gather(acc, (mine, uuid.uuid4().hex))
        return {name for names, _ in everyone for name in names}, everyone[0][1]

    def publish(self, path: Path, state: TrainState, *, protected: set[str] | None = None,
                save_id: str | None = None) -> None:
        """A node's local main process, once ``path`` is complete: rotate local checkpoints and queue the upload
        of this node's part, after which the node of rank 0 writes the manifest and rotates the store on its
        uploader's thread (training never waits for the uploads or the deletions)."""
        self._rotate_local(protected or set())
        if self.uploader is None or self.store is None:
            return
        part = PartUpload(self.store, path, f"{self.store_prefix}/{path.name}", self.layout,
                          save_id=save_id or uuid.uuid4().hex,
                          metadata={"global_step": state.global_step, "epoch": state.epoch},
                          wait_s=self.uploader.deadline_s, stop=self.uploader.stopping)
        self.uploader.submit_work(path, part.uri, part, then=self._rotate_store if self.layout.first == 0 else None)

    def _pending_names(self, names: list[str]) -> set[str]:
        """Which of these checkpoints still wait for their upload."""
        if self.uploader is None:
            return set()
        pending = set(self.uploader.pending())
        return {name for name in names if self._checkpoint_uri(name) in pending}

    def _rotate_local(self, protected: set[str]) -> None:
        if self.cfg.save_total_limit is None:
            return
        done = [p.name for p in complete_checkpoints(self.root)]
        # A checkpoint still waiting for its upload is kept: deleting it would lose it in the store too.
        keep = protected | self._pending_names(done)
        for name in checkpoints_to_delete(done, self.cfg.save_total_limit, keep):
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
        """This node's uploads (its parts; on rank 0's node the manifests too, so all parts)."""
        if self.uploader is not None:
            self.uploader.wait(timeout_s)

    # -- resume ---------------------------------------------------------------------------------------------
    def resolve(self, spec: str | None) -> Path | None:
        """Collective: every rank calls it. The checkpoint to resume from, on this node's disk (fetched from the
        store if needed); the same checkpoint on every rank."""
        if spec is None:
            return None
        acc = self.accelerator
        return self._resolve(spec, gather=lambda value: _gather(acc, value),
                             decide=lambda fn: on_rank_zero(acc, fn), local_main=acc.is_local_main_process)

    def find_resume(self, spec: str) -> Path | None:
        """:meth:`resolve` for one process playing every node (no accelerator, no collective).

        ``auto``: the newest complete local checkpoint, else the newest one in the store that downloads intact.
        ``s3://...`` or ``file://...``: that checkpoint of a store, downloaded. Else a local directory."""
        return self._resolve(spec, gather=lambda value: [value], decide=lambda fn: fn(), local_main=True)

    def _resolve(self, spec: str, *, gather: Callable[[Any], list[Any]], decide: Callable[[Callable[[], Any]], Any],
                 local_main: bool) -> Path | None:
        # Each node's own view (its usable checkpoints, or whether the given directory is one), then rank 0's
        # decision: ("local", name), ("path", directory) or ("store", location or None for this run's store,
        # names to try).
        views = [v for v in gather((self.layout.first, self._local_view(spec)) if local_main else None)
                 if v is not None]
        plan = decide(lambda: self._plan(spec, views))
        if plan is None:
            return None
        if plan[0] == "local":  # by name: each node's own output_dir
            found: Path | None = self.root / plan[1]
        elif plan[0] == "path":
            found = Path(plan[1])
        else:
            found = self._fetch_agreed(plan[1], plan[2], must=spec != "auto", gather=gather, local_main=local_main)
        if found is not None and found.parent.resolve() == self.root.resolve():
            self.resumed_from = found.name
        return found

    def _local_view(self, spec: str) -> Any:
        if spec == "auto":
            return [p.name for p in complete_checkpoints(self.root) if usable_here(p, self.layout)]
        return (Path(spec) / COMPLETE).is_file()

    def _plan(self, spec: str, views: list[tuple[int, Any]]) -> tuple[Any, ...] | None:
        """Rank 0: where to resume from; a user error (exit 2) for a target that cannot be."""
        try:
            return self._choose(spec, views)
        except (ConfigError, StorageError, OSError) as e:  # the user's target, not a bug: one line, exit 2
            raise ConfigError(f"resume_from_checkpoint: {e}") from None

    def _choose(self, spec: str, views: list[tuple[int, Any]]) -> tuple[Any, ...] | None:
        if spec == "auto":
            everywhere = set.intersection(*(set(names) for _, names in views))
            if everywhere:
                return "local", newest_first(everywhere)[0]
            if self.store is None:
                partial = {first: names[-1] for first, names in views if names}
                if partial:
                    raise ConfigError(f"complete checkpoints only on the node(s) of rank(s) {sorted(partial)} "
                                      f"({', '.join(sorted(set(partial.values())))}), not on every node: put "
                                      "output_dir on a filesystem all nodes share, or set s3_uri")
                logger.info("resume_from_checkpoint=auto: no complete checkpoint yet; starting fresh")
                return None
            names = newest_first(self.store.list_complete(self.store_prefix))
            if not names:
                logger.info("resume_from_checkpoint=auto: nothing local or in the store; starting fresh")
                return None
            return "store", None, names
        if spec.startswith(("s3://", "file://")):
            location, _, name = spec.rstrip("/").rpartition("/")
            try:
                open_store(location)
            except ValueError as e:
                raise ConfigError(f"{spec} is not a checkpoint in a store: {e}") from e
            return "store", location, [name]
        lacking = [first for first, complete in views if not complete]
        if lacking:
            where = f" on the node of rank(s) {lacking}" if len(views) > 1 else ""
            raise ConfigError(f"{spec} is not a complete checkpoint (no {COMPLETE} marker{where})")
        return "path", spec

    def _fetch_agreed(self, location: str | None, names: list[str], *, must: bool,
                      gather: Callable[[Any], list[Any]], local_main: bool) -> Path | None:
        """Every node fetches what its ranks read of the first of ``names``; the first one every node fetched
        intact wins, so all ranks resume from the same checkpoint."""
        store = (self.store if location is None else open_store(location)) if local_main else None
        for name in names:
            prefix = f"{self.store_prefix}/{name}" if location is None else name
            uri = self._checkpoint_uri(name) if location is None else f"{location}/{name}"
            dest = self.root / name
            results = [r for r in gather(self._fetch_here(store, prefix, dest) if local_main else None)
                       if r is not None]
            failed = [(first, error) for first, error, _ in results if error is not None]
            if not failed:
                if local_main:
                    _write_marker(dest / COMPLETE, f"{name}\n")
                logger.info("resuming from %s: %d node(s) fetched their ranks' files in %.2fs (slowest)", uri,
                            len(results), max(seconds for _, _, seconds in results))
                return dest
            if local_main:
                shutil.rmtree(dest, ignore_errors=True)  # no node trusts a checkpoint some node could not fetch
            detail = "; ".join(f"node of rank {first}: {error}" for first, error in failed)
            if must:
                error = ConfigError(f"resume_from_checkpoint: {uri}: {detail}")
                error.reported_by_rank_zero = not self._is_main  # type: ignore[attr-defined]
                raise error
            if self._is_main:
                logger.error("refusing checkpoint %s: %s; trying the previous one", name, detail)
        logger.info("resume_from_checkpoint=auto: no checkpoint in the store could be fetched; starting fresh")
        return None

    def _fetch_here(self, store: Store | None, prefix: str, dest: Path) -> tuple[int, str | None, float]:
        """This node's share of a fetch: (its first rank, what went wrong or None, seconds)."""
        assert store is not None
        t0 = time.perf_counter()
        try:
            count, size = fetch_part(store, prefix, dest, self.layout)
        except (StorageError, OSError, ValueError, TypeError) as e:
            return self.layout.first, str(e) or type(e).__name__, time.perf_counter() - t0
        seconds = time.perf_counter() - t0
        logger.info("fetched %d files (%.1f MiB) of %s for rank(s) %s in %.2fs", count, size / 2**20,
                    store.uri_for(prefix), list(self.layout.ranks), seconds)
        return self.layout.first, None, seconds

    def check_resume(self, path: Path) -> TrainState:
        """The saved counters, checked against this run (see :func:`check_resume`)."""
        return check_resume(self.cfg, self.accelerator.num_processes, path)

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
                load_model_only(self.accelerator, path)
            self.accelerator.step = 0  # accumulation counting starts afresh with the new schedule
            logger.info("loaded weights only from %s (saved on %d ranks, now %d)", path, saved.world_size, world)
            state.tracker_run_id = saved.tracker_run_id
            return state
        t0 = time.perf_counter()
        if self.needs_reshard(path):
            load_resharded(self.accelerator, path, saved, scratch_root=self.root)
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

    def _is_deepspeed(self) -> bool:
        return getattr(self.accelerator.state, "deepspeed_plugin", None) is not None
