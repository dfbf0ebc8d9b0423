"""Which checkpoint a run resumes from, agreed by every node, and whether this run may continue it.

``auto``: the newest checkpoint every node has complete on its own disk, else the newest in the store of which
every node fetched its ranks' files intact (a node that cannot makes all of them try the previous one).
``s3://...`` or ``file://...``: that checkpoint of a store. Else a local directory with ``COMPLETE``. A target
that cannot be resumed is a user error naming it (exit 2), on every rank."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qa.checkpoint.backends import open_store
from qa.checkpoint.location import is_store_uri
from qa.checkpoint.parts import NodeLayout, fetch_part, usable_here
from qa.checkpoint.reshard import check_global_batch
from qa.checkpoint.rotation import newest_first
from qa.checkpoint.state import COMPLETE, STATE_FILE, TrainState, complete_checkpoints
from qa.checkpoint.store import StorageError, Store
from qa.data.settings import BATCH_SPLIT_KEYS, DataOrder
from qa.errors import ConfigError
from qa.files import atomic_write_text

logger = logging.getLogger(__name__)


def check_resume(order: DataOrder, weights_only: bool, world: int, path: Path) -> TrainState:
    """The counters saved in ``path``, once checked against this run: ConfigError (one line naming the
    setting) if the data order or the global batch differ. Every rank reads the same file and decides alike."""
    saved = TrainState.from_file(path / STATE_FILE)
    if weights_only:
        return saved  # a new schedule from the weights: any data order, batch or world size
    now = order.key(world)
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
        was = saved.data_order or {}
        split = (f"{was.get('per_device_train_batch_size')} per device x {saved.world_size} process(es) x "
                 f"{was.get('gradient_accumulation_steps')} accumulation")
        check_global_batch(saved.global_batch_size, per_device=order.per_device_train_batch_size,
                           world_size=world, accumulation=order.gradient_accumulation_steps,
                           saved_split=split, where=f"checkpoint {path}")
    return saved



@dataclass(frozen=True)
class ResumeFinder:
    """A node's part in choosing the checkpoint: ``find`` is given how to gather every node's value and how rank 0
    decides, so the same code serves a multi-node run and one process playing every node."""

    root: Path  # this node's output_dir/checkpoints
    layout: NodeLayout
    store: Store | None
    store_prefix: str  # this run's checkpoints in the store
    is_main: bool

    def _uri(self, name: str) -> str | None:
        return None if self.store is None else self.store.uri_for(f"{self.store_prefix}/{name}")

    def find(self, spec: str, *, gather: Callable[[Any], list[Any]], decide: Callable[[Callable[[], Any]], Any],
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
        if is_store_uri(spec):
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
            uri = self._uri(name) if location is None else f"{location}/{name}"
            dest = self.root / name
            results = [r for r in gather(self._fetch_here(store, prefix, dest) if local_main else None)
                       if r is not None]
            failed = [(first, error) for first, error, _ in results if error is not None]
            if not failed:
                if local_main:
                    atomic_write_text(dest / COMPLETE, f"{name}\n")  # several nodes may write it: never seen empty
                logger.info("resuming from %s: %d node(s) fetched their ranks' files in %.2fs (slowest)", uri,
                            len(results), max(seconds for _, _, seconds in results))
                return dest
            if local_main:
                shutil.rmtree(dest, ignore_errors=True)  # no node trusts a checkpoint some node could not fetch
            detail = "; ".join(f"node of rank {first}: {error}" for first, error in failed)
            if must:
                error = ConfigError(f"resume_from_checkpoint: {uri}: {detail}")
                error.reported_by_rank_zero = not self.is_main  # type: ignore[attr-defined]
                raise error
            if self.is_main:
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
