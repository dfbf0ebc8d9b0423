"""Checkpoints: save (all ranks), mark complete, rotate, publish (every node, background), resume.

Layout: ``output_dir/checkpoints/step_NNNNNNN/`` holds Accelerate/DeepSpeed state, ``trainer_state.json``
(counters, data-order seed, world size, tracker run id), ``config.yaml`` and, once every rank's files are
written, ``COMPLETE``. Each rank writes to its own node's ``output_dir``; the nodes need not share a filesystem.
In the store (``s3_uri``: S3 or a shared filesystem) the same files live under
``<s3_uri>/<run_name>/checkpoints/step_NNNNNNN/``: each node uploads the files its ranks own, and the node of rank
0 writes ``manifest.json`` once every node's part is verified there (qa.checkpoint.parts); a checkpoint exists
for readers only with it. ``save_total_limit`` applies to both copies.

Resuming, the nodes agree on one checkpoint (qa.checkpoint.resume): their own copies if every node has a
complete one, else the newest in the store, of which each node fetches what its ranks read; if any node cannot,
all of them try the previous checkpoint together. Without a store, a multi-node run resumes only from copies every
node has (a shared ``output_dir``)."""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from accelerate.utils import gather_object

from qa.checkpoint.disk import DiskError, describe_write_error, is_write_failure, shortfall, tree_bytes
from qa.checkpoint.leftovers import collect_unpublished
from qa.checkpoint.loading import load_model_only, load_resharded
from qa.checkpoint.parts import NodeLayout, PartUpload, layout_from_local_indices
from qa.checkpoint.reshard import zero_state_dirs
from qa.checkpoint.resume import ResumeFinder, check_resume
from qa.checkpoint.rotation import checkpoints_to_delete, crash_leftovers
from qa.checkpoint.settings import CheckpointSettings
from qa.checkpoint.state import COMPLETE, STATE_FILE, TrainState, complete_checkpoints, step_name
from qa.checkpoint.store import StorageError, Store
from qa.checkpoint.uploader import BackgroundUploader
from qa.data.settings import DataOrder
from qa.distributed.rank_zero import on_rank_zero
from qa.errors import ConfigError
from qa.files import atomic_write_text

logger = logging.getLogger(__name__)

RUN_RECORD = "run.json"  # <s3_uri>/<run_name>/run.json: the run's tracker id, kept beside its checkpoints


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


class Checkpointer:
    """Owns the local checkpoint directory and, on each node's local main process, the store's uploader.

    Only :meth:`save`, :meth:`resolve` and :meth:`load` need the accelerator; :meth:`publish` and
    :meth:`resume_finder` are a node's share of them and work without one (a single process then plays every node);
    :meth:`check_resume` and :meth:`needs_reshard` read only its number of processes.
    """

    def __init__(self, settings: CheckpointSettings, accelerator: Any, store: Store | None = None,
                 uploader: BackgroundUploader | None = None, *, output_dir: Path, run_name: str,
                 data_order: DataOrder, config_yaml: str = "") -> None:
        """Collective when ``accelerator`` runs several processes (:func:`node_layout`).

        ``data_order``: what the data position of a checkpoint depends on (a resume must keep it);
        ``config_yaml``: the resolved run config, secrets redacted, saved beside each checkpoint."""
        self.settings = settings
        self.accelerator = accelerator
        self.data_order = data_order
        self.config_yaml = config_yaml
        self.root = Path(output_dir) / "checkpoints"
        self.store = store
        self.uploader = uploader
        self.layout = node_layout(accelerator)
        self.run_prefix = run_name
        self.store_prefix = f"{self.run_prefix}/checkpoints"  # this run's checkpoints in the store
        self.resumed_from: str | None = None  # name of this run's checkpoint we resumed from: never rotated away
        self.last_save_s: float | None = None
        self.last_saved_step: int | None = None
        # Bytes the next save needs on this node: the last checkpoint's size, before the first one an estimate
        # from the parameter count (set by qa.trainer.setup.build_model), None: not checked.
        self.expected_bytes: int | None = None
        self._protected: set[str] = set()  # checkpoints the last save found uploading on some node
        self._is_main = accelerator is None or accelerator.is_main_process

    # -- store naming ---------------------------------------------------------------------------------------
    def store_uri_for(self, rel: str) -> str | None:
        """URI in the store of ``rel`` (relative to this run), None without a store."""
        if self.store is None:
            return None
        return self.store.uri_for(f"{self.run_prefix}/{rel}")

    def checkpoint_uri(self, name: str) -> str | None:
        """URI in the store of this run's checkpoint ``name``, None without a store."""
        return self.store_uri_for(f"checkpoints/{name}")

    # -- the run's tracker id in the store ---------------------------------------------------------------------
    # A node lost with its disk before anything was published takes the tracker's run id file with it; kept in the
    # store too, a restart there continues the same W&B run instead of opening a second one.
    def stored_run_id(self) -> str | None:
        """The tracker run id this run recorded in the store, None without a store or a record."""
        if self.store is None:
            return None
        try:
            record = self.store.read_record(f"{self.run_prefix}/{RUN_RECORD}")
        except StorageError as e:
            logger.warning("could not read this run's tracker id from the store: %s", e)
            return None
        run_id = (record or {}).get("tracker_run_id")
        return run_id if isinstance(run_id, str) else None

    def record_run_id(self, run_id: str) -> None:
        """Rank 0: keep ``run_id`` in the store beside the checkpoints (best effort: a failure only warns)."""
        if self.store is None or not self._is_main:
            return
        try:
            self.store.put_record(f"{self.run_prefix}/{RUN_RECORD}", {"tracker_run_id": run_id})
        except StorageError as e:
            logger.warning("could not record the tracker run id in the store: %s", e)

    # -- save -----------------------------------------------------------------------------------------------
    def save(self, state: TrainState, *, export: Any | None = None) -> Path | None:
        """Collective: every rank calls it. Returns the checkpoint directory; None when the disk had no room and
        ``keep_training_when_disk_full`` skipped it. A full disk or a failed write otherwise raises DiskError
        with the previous checkpoint intact and no partial directory left."""
        t0 = time.perf_counter()
        acc = self.accelerator
        path = self.root / step_name(state.global_step)
        if acc.is_local_main_process and path.exists():
            # A crash mid-save left a partial directory for this step; never mix old and new shards. Each node
            # clears its own disk (on a shared one, they race to clear the same directory: errors ignored).
            shutil.rmtree(path, ignore_errors=True)
            if (path / COMPLETE).exists():
                raise OSError(f"could not remove the earlier checkpoint {path}")
        mine = shortfall(self.root, self.expected_bytes) if acc.is_local_main_process and self.expected_bytes else None
        if self._disk_problem(state, path, mine, removed=False):
            return None
        acc.wait_for_everyone()
        error = None
        try:
            acc.save_state(str(path))
            if export is not None:
                export(path / "model")
            if acc.is_main_process:
                (path / STATE_FILE).write_text(state.to_json())
                (path / "config.yaml").write_text(self.config_yaml)
        except Exception as e:
            if not is_write_failure(e):
                raise
            error = f"saving {path} failed: {describe_write_error(e, path)}"
        if self._disk_problem(state, path, error, removed=True):
            return None
        acc.wait_for_everyone()
        pending, save_id = self._agree_on_publishing()
        if acc.is_local_main_process:
            # Every rank has written its files (this node's ranks to this disk): the checkpoint is complete here.
            _write_marker(path / COMPLETE, f"{state.global_step}\n")
            self.publish(path, state, protected=pending, save_id=save_id)
        if acc.is_local_main_process:
            self.expected_bytes = tree_bytes(path)  # what the next save will need here
        acc.wait_for_everyone()
        # The preemption path saves only a step not saved yet: saving it again would delete the directory its
        # upload reads and publish it twice, under two save ids (on several nodes the first one then waits for
        # parts that never come).
        self.last_saved_step = state.global_step
        self.last_save_s = time.perf_counter() - t0
        logger.info("checkpoint %s saved in %.2fs", path, self.last_save_s)
        return path

    def _disk_problem(self, state: TrainState, path: Path, mine: str | None, *, removed: bool) -> bool:
        """Collective: any node's disk problem (no room before the save, or a failed write) on every rank. The
        partial directory is removed first; then DiskError, or True (skip this save) with
        ``keep_training_when_disk_full`` and a store."""
        acc = self.accelerator
        problems = [p for p in _gather(acc, mine) if p]
        if not problems:
            return False
        if removed and acc.is_local_main_process:
            shutil.rmtree(path, ignore_errors=True)  # a partial checkpoint only keeps the disk full
        acc.wait_for_everyone()
        done = complete_checkpoints(self.root)
        kept = f"the newest complete checkpoint {done[-1]} is intact" if done else "no earlier checkpoint exists"
        what = "; ".join(dict.fromkeys(problems)) + ("; the partial directory was removed" if removed else "")
        if self.settings.keep_training_when_disk_full and self.store is not None:
            if acc.is_main_process:
                logger.warning("checkpoint at step %d skipped: %s; training goes on (keep_training_when_disk_full), "
                               "%s", state.global_step, what, kept)
            return True
        raise DiskError(f"checkpoint at step {state.global_step}: {what}; the run stops here and {kept}. Free "
                        "space or lower save_total_limit, then continue with --resume_from_checkpoint auto")

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
        self._protected = protected or set()
        self._rotate_local(self._protected)
        if self.uploader is None or self.store is None:
            return
        part = PartUpload(self.store, path, f"{self.store_prefix}/{path.name}", self.layout,
                          save_id=save_id or uuid.uuid4().hex,
                          metadata={"global_step": state.global_step, "epoch": state.epoch},
                          wait_s=self.uploader.deadline_s, stop=self.uploader.stopping,
                          superseded=self.uploader.has_later_work,
                          superseded_wait_s=self.uploader.superseded_wait_s)
        self.uploader.submit_work(path, part.uri, part, then=lambda: self._after_upload(path.name))

    def _after_upload(self, published: str) -> None:
        """On the uploader's thread, once a part is published: the store's rotation (rank 0's node), and the local
        one again, since the checkpoint kept while it uploaded may go now (else the disk keeps one more than
        save_total_limit until the next save, and for good after the last one). A save in progress has no
        COMPLETE marker yet and is newer than every complete one, so neither rotation touches it."""
        if self.layout.first == 0:
            self._rotate_store(published)
        self._rotate_local(self._protected)

    def _pending_names(self, names: list[str]) -> set[str]:
        """Which of these checkpoints still wait for their upload."""
        if self.uploader is None:
            return set()
        pending = set(self.uploader.pending())
        return {name for name in names if self.checkpoint_uri(name) in pending}

    def _rotate_local(self, protected: set[str]) -> None:
        if self.settings.save_total_limit is None:
            return
        done = [p.name for p in complete_checkpoints(self.root)]
        # A checkpoint still waiting for its upload is kept: deleting it would lose it in the store too.
        keep = protected | self._pending_names(done)
        for name in checkpoints_to_delete(done, self.settings.save_total_limit, keep):
            shutil.rmtree(self.root / name, ignore_errors=True)
        incomplete = [p.name for p in self.root.glob("step_*") if not (p / COMPLETE).exists()]
        for name in crash_leftovers(incomplete, done[-1] if done else None):
            shutil.rmtree(self.root / name, ignore_errors=True)

    def _rotate_store(self, published: str) -> None:
        """On the uploader's thread, after the manifest of ``published`` landed: delete the older checkpoints
        beyond the limit, and what interrupted uploads of older ones left without a manifest."""
        limit = self.settings.save_total_limit
        if self.store is None:
            return
        # This node's queue holds only newer checkpoints (it uploads in save order): none of them is touched.
        collect_unpublished(self.store, self.store_prefix, published)
        if limit is None:
            return
        names = self.store.list_complete(self.store_prefix)
        protected = self._pending_names(names)
        if self.resumed_from is not None:
            protected.add(self.resumed_from)
        for name in checkpoints_to_delete(names, limit, protected):
            self.store.delete_prefix(f"{self.store_prefix}/{name}")  # manifest first
            logger.info("deleted %s from the store (save_total_limit %d)", self.checkpoint_uri(name), limit)

    def upload_final(self, final_dir: Path) -> None:
        if self.uploader is not None and self.accelerator.is_main_process:
            self.uploader.submit(str(final_dir), f"{self.run_prefix}/final")

    def collect_leftovers(self) -> None:
        """Rank 0, at the end, once no node uploads any more: delete every unpublished checkpoint of this run."""
        if self.store is not None and self._is_main:
            try:
                collect_unpublished(self.store, self.store_prefix, None)
            except StorageError as e:
                logger.warning("could not delete this run's unpublished checkpoints from the store: %s", e)

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
        if acc.is_local_main_process:
            self.remove_partial(keep=None if spec == "auto" or "://" in spec else Path(spec))
        acc.wait_for_everyone()
        found = self.resume_finder().find(spec, gather=lambda value: _gather(acc, value),
                                          decide=lambda fn: on_rank_zero(acc, fn), local_main=acc.is_local_main_process)
        return self.remember_resume(found)

    def remove_partial(self, keep: Path | None = None) -> list[str]:
        """Delete this node's checkpoint directories that never got their COMPLETE marker: an earlier run died
        while saving them (a full disk, a crash). Resume never picks them, and they keep the disk full. ``keep``:
        a directory the user named (resume then says why it cannot be used instead of it vanishing)."""
        removed = []
        for path in sorted(self.root.glob("step_*")):
            if keep is not None and path.resolve() == keep.resolve():
                continue
            if path.is_dir() and not (path / COMPLETE).exists():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
                logger.warning("removed the partial checkpoint %s left by an earlier run", path)
        return removed

    def resume_finder(self) -> ResumeFinder:
        """This node's part in choosing the checkpoint, for callers with collectives of their own."""
        return ResumeFinder(root=self.root, layout=self.layout, store=self.store, store_prefix=self.store_prefix,
                            is_main=self._is_main)

    def remember_resume(self, found: Path | None) -> Path | None:
        """Note the checkpoint a resume found (this run's own is then never rotated away); returns it."""
        if found is not None and found.parent.resolve() == self.root.resolve():
            self.resumed_from = found.name  # this run's own checkpoint: never rotated away from the store
        return found

    def check_resume(self, path: Path) -> TrainState:
        """The saved counters, checked against this run (see :func:`check_resume`)."""
        return check_resume(self.data_order, self.settings.resume_weights_only, self.accelerator.num_processes, path)

    def needs_reshard(self, path: Path) -> bool:
        """Whether ``path`` holds ZeRO state partitioned for another world size, to load as a universal checkpoint
        (the DeepSpeed engine must be created with ``"checkpoint": {"load_universal": true}`` for that)."""
        if self.settings.resume_weights_only or not self._is_deepspeed():
            return False
        saved = TrainState.from_file(path / STATE_FILE)
        return saved.world_size != self.accelerator.num_processes and bool(zero_state_dirs(path))

    def load(self, path: Path, state: TrainState) -> TrainState:
        """Collective: restore Accelerate/DeepSpeed state and return the saved counters.

        Same world size: everything as saved, RNG included (bit-exact). Another world size with the same global
        batch: model, optimizer and schedule re-sharded, the data position kept (qa.checkpoint.reshard)."""
        saved = self.check_resume(path)
        world = self.accelerator.num_processes
        if self.settings.resume_weights_only:
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
        self.accelerator.step = saved.steps_in_epoch * self.data_order.gradient_accumulation_steps
        logger.info("resumed from %s at step %d (epoch %d, %d global batches in); saved on %d rank(s), now %d; "
                    "state loaded in %.2fs", path, saved.global_step, saved.epoch, saved.steps_in_epoch,
                    saved.world_size, world, time.perf_counter() - t0)
        return saved

    def _is_deepspeed(self) -> bool:
        return getattr(self.accelerator.state, "deepspeed_plugin", None) is not None
