"""A checkpoint's parts: which rank owns each file, and what each node publishes and fetches.

Every rank writes its checkpoint files to its own node's disk: Accelerate's ``random_states_<rank>.pkl`` and
DeepSpeed's ``zero_pp_rank_<rank>_mp_rank_00_optim_states.pt`` (``..._model_states.pt`` under ZeRO-3) on each
rank; the files every rank reads (DeepSpeed's ``mp_rank_00_model_states.pt``, ``scheduler.bin``,
``trainer_state.json``, ``config.yaml``, ``COMPLETE``) on global rank 0. Without a shared filesystem no node
holds the whole checkpoint, so each node publishes its own ranks' part and later fetches only what its ranks
read. Ownership follows from a file's name alone: on a shared filesystem, where every node sees every file,
each file is still uploaded exactly once.

Publishing runs on each node's uploader thread, without collectives: a node uploads and verifies the files its
ranks own, then writes a part record ``<checkpoint>/parts/ranks_<first>-<last>.json`` (those files' sizes and
SHA-256, and the save's id); the node of global rank 0 then waits, bounded, for records of the same save that
cover every rank and writes ``manifest.json`` merging them. A checkpoint missing any rank's part has no manifest.
A run on one node writes its manifest directly, as before.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qa.checkpoint.manifest import files_to_upload, validate_manifest
from qa.checkpoint.state import COMPLETE, STATE_FILE, TrainState
from qa.checkpoint.store import CorruptObjectError, MiB, StorageError, Store
from qa.checkpoint.uploader import SupersededError

logger = logging.getLogger(__name__)

PARTS_DIR = "parts"
_RANK_FILE = re.compile(
    r"(?:^|/)(?:random_states_(\d+)\.pkl|(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_(?:optim|model)_states\.pt)$")


def file_rank(rel: str) -> int | None:
    """The rank a rank-specific file belongs to; None for a file every rank reads (rank 0 writes those)."""
    match = _RANK_FILE.search(rel)
    if match is None:
        return None
    return int(match.group(1) if match.group(1) is not None else match.group(2))


def publisher_rank(rel: str) -> int:
    """The rank whose node uploads ``rel``: its own rank, or global rank 0 for a shared file."""
    rank = file_rank(rel)
    return 0 if rank is None else rank


@dataclass(frozen=True)
class NodeLayout:
    """This node's processes: global ranks ``first`` to ``first + count - 1``, out of ``world_size``."""

    first: int = 0
    count: int = 1
    world_size: int = 1

    @property
    def ranks(self) -> range:
        return range(self.first, self.first + self.count)

    @property
    def only_node(self) -> bool:
        return self.count == self.world_size

    @property
    def part_name(self) -> str:
        return f"ranks_{self.first}-{self.first + self.count - 1}.json"


def layout_from_local_indices(local_indices: Sequence[int], rank: int) -> NodeLayout:
    """The node of ``rank``, given every rank's local index (``local_indices[r]``, gathered from all ranks).

    A node's ranks are numbered contiguously, as torchrun (and so ``accelerate launch``) numbers them; any other
    numbering is a ValueError, since which node publishes which file would be guessed wrong."""
    world = len(local_indices)
    firsts = [r for r, i in enumerate(local_indices) if i == 0]
    if not firsts or firsts[0] != 0 or any(i != r - max(f for f in firsts if f <= r)
                                           for r, i in enumerate(local_indices)):
        raise ValueError(f"ranks are not numbered contiguously per node (local index of each rank: "
                         f"{list(local_indices)})")
    first = max(f for f in firsts if f <= rank)
    end = min((f for f in firsts if f > rank), default=world)
    return NodeLayout(first, end - first, world)


def node_uploads(rels: Iterable[str], ranks: range) -> list[str]:
    """The files among ``rels`` that the node running ``ranks`` publishes."""
    return [rel for rel in rels if publisher_rank(rel) in ranks]


def node_needs(rels: Iterable[str], ranks: range, saved_world: int | None, world: int) -> list[str]:
    """What the ranks ``ranks`` read from a checkpoint saved by ``saved_world`` ranks: every shared file plus
    their own (Accelerate reads ``random_states_<rank>``, ZeRO-1/2 its rank's optimizer shard). With another
    or an unknown world size, every file: whatever reshards the state may read any rank's."""
    if saved_world != world:
        return list(rels)
    return [rel for rel in rels if (rank := file_rank(rel)) is None or rank in ranks]


def ranks_without_files(rels: Iterable[str], world: int) -> list[int]:
    """Ranks below ``world`` that have no file of their own, if any rank has one. Accelerate writes
    ``random_states_<rank>.pkl`` on every rank, so a rank without a file is a rank whose part is missing."""
    have = {rank for rel in rels if (rank := file_rank(rel)) is not None}
    return [r for r in range(world) if r not in have] if have else []


def part_record(save_id: str, layout: NodeLayout, entries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {"save_id": save_id, "ranks": [layout.first, layout.first + layout.count - 1],
            "world_size": layout.world_size, "files": {rel: dict(info) for rel, info in entries.items()}}


def merge_parts(records: Iterable[Mapping[str, Any]], save_id: str) -> tuple[dict[str, Any], set[int]]:
    """The files listed by this save's part records, and the ranks those records cover. Records of another
    save (an earlier attempt at the same step) are ignored; two parts listing one file differently are a
    CorruptObjectError."""
    files: dict[str, Any] = {}
    covered: set[int] = set()
    for record in records:
        if record.get("save_id") != save_id:
            continue
        ranks = record.get("ranks")
        if not (isinstance(ranks, list) and len(ranks) == 2 and all(type(r) is int for r in ranks)):
            raise CorruptObjectError(f"part record of save {save_id} has invalid ranks {ranks!r}")
        validate_manifest({"files": record.get("files")}, f"part record of ranks {ranks}")
        for rel, info in record["files"].items():
            if files.setdefault(rel, info) != info:
                raise CorruptObjectError(f"two parts of save {save_id} list {rel} differently")
        covered.update(range(ranks[0], ranks[1] + 1))
    return files, covered


class PartUpload:
    """One node's share of publishing a checkpoint: the work its uploader runs and retries.

    Every attempt picks up where the last one failed: files and part record are uploaded once, and only the
    node of rank 0 goes on to wait for the other parts (up to ``wait_s`` after it first starts waiting, or
    until ``stop`` is set) and to write the manifest."""

    def __init__(self, store: Store, local_dir: str | Path, key_prefix: str, layout: NodeLayout, *, save_id: str,
                 metadata: Mapping[str, Any] | None, wait_s: float, stop: threading.Event,
                 poll_s: float = 0.2, superseded: Callable[[], bool] | None = None,
                 superseded_wait_s: float = 30.0) -> None:
        self.store, self.local_dir, self.key_prefix, self.layout = store, Path(local_dir), key_prefix, layout
        self.save_id, self.metadata = save_id, dict(metadata or {})
        self.wait_s, self.stop, self.poll_s = wait_s, stop, poll_s
        # A newer checkpoint queued behind this one: a part still missing then waits superseded_wait_s more at
        # most, not wait_s (s3_upload_timeout), so one part that never comes cannot stall every later checkpoint.
        self.superseded, self.superseded_wait_s = superseded, superseded_wait_s
        self.uri = store.uri_for(key_prefix)
        self._entries: dict[str, Any] | None = None
        self._wait_until: float | None = None
        self._superseded = False

    def __call__(self) -> None:
        if self._entries is None:
            self._entries = self._upload_part()
        if self.layout.first == 0:
            entries = self._entries if self.layout.only_node else self._wait_for_parts()
            missing = ranks_without_files(entries, self.layout.world_size)
            if missing:
                raise StorageError(f"{self.uri}: no files of rank(s) {missing}; not writing its manifest")
            self.store.write_manifest(self.key_prefix, entries, self.metadata)
            logger.info("published %s: %d files from %d rank(s)", self.uri, len(entries), self.layout.world_size)

    def _upload_part(self) -> dict[str, Any]:
        t0 = time.monotonic()
        if not self.local_dir.is_dir():
            raise StorageError(f"not a directory: {self.local_dir}")
        rels = node_uploads([rel for rel, _ in files_to_upload(self.local_dir)], self.layout.ranks)
        # Readers must not see an old manifest describing objects that are being replaced; any node may be
        # the first to replace one, and none writes a manifest before every node has dropped it.
        self.store.drop_manifest(self.key_prefix)
        entries = self.store.upload_files(self.local_dir, self.key_prefix, rels)
        if not self.layout.only_node:
            self.store.put_record(f"{self.key_prefix}/{PARTS_DIR}/{self.layout.part_name}",
                                  part_record(self.save_id, self.layout, entries))
        logger.info("uploaded the part of rank(s) %d-%d: %d files (%.1f MiB) to %s in %.1fs", self.layout.first,
                    self.layout.first + self.layout.count - 1, len(entries),
                    sum(e["size"] for e in entries.values()) / MiB, self.uri, time.monotonic() - t0)
        return entries

    def _read_parts(self) -> list[dict[str, Any]]:
        records = []
        for key in self.store.list_keys(f"{self.key_prefix}/{PARTS_DIR}"):
            name = key.rpartition("/")[2]
            if name.endswith(".json") and not name.startswith("."):  # not a write in progress
                record = self.store.read_record(key)
                if record is not None:
                    records.append(record)
        return records

    def _wait_for_parts(self) -> dict[str, Any]:
        if self._wait_until is None:
            self._wait_until = time.monotonic() + self.wait_s
        delay, told = self.poll_s, False
        while True:
            entries, covered = merge_parts(self._read_parts(), self.save_id)
            missing = [r for r in range(self.layout.world_size) if r not in covered]
            if not missing:
                return entries
            if not self._superseded and self.superseded is not None and self.superseded():
                self._superseded = True
                self._wait_until = min(self._wait_until, time.monotonic() + self.superseded_wait_s)
            left = self._wait_until - time.monotonic()
            if left <= 0 and self._superseded:
                raise SupersededError(f"{self.uri}: the parts of rank(s) {missing} did not arrive and a newer "
                                      "checkpoint is waiting; not writing its manifest")
            if left <= 0:
                raise StorageError(f"{self.uri}: the parts of rank(s) {missing} did not arrive within "
                                   f"{self.wait_s:.0f}s; not writing its manifest")
            if not told:
                logger.info("%s: waiting for the parts of rank(s) %s", self.uri, missing)
                told = True
            if self.stop.wait(min(delay, left)):  # polling the store: the other nodes cannot notify us
                raise StorageError(f"{self.uri}: the uploader closed while waiting for the parts of rank(s) "
                                   f"{missing}")
            delay = min(delay * 2, 5.0)


def usable_here(path: Path, layout: NodeLayout) -> bool:
    """Whether this node can resume from its own copy ``path``: it is complete, holds the files every rank reads
    (a node that does not share rank 0's filesystem holds only its own ranks' files) and each rank of this node
    that the checkpoint's world size asks for has its files."""
    if not (path / COMPLETE).is_file() or not (path / STATE_FILE).is_file():
        return False
    try:
        saved_world = TrainState.from_file(path / STATE_FILE).world_size
    except (OSError, ValueError, TypeError):
        return False
    ranks = layout.ranks if saved_world == layout.world_size else range(saved_world)
    rels = [p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()]
    have = {rank for rel in rels if (rank := file_rank(rel)) is not None}
    return not have or all(r in have for r in ranks)


def fetch_part(store: Store, key_prefix: str, dest: Path, layout: NodeLayout) -> tuple[int, int]:
    """Download into ``dest`` what this node's ranks read from the complete checkpoint at ``key_prefix``, each
    file verified; returns (files, bytes). StorageError names what is missing or corrupt.

    ``COMPLETE`` is removed first and not downloaded: the caller writes it once every node has its files."""
    manifest = store.read_manifest(key_prefix)
    files = manifest["files"]
    uri = store.uri_for(key_prefix)
    if COMPLETE not in files:
        raise StorageError(f"{uri} has no {COMPLETE} marker")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / COMPLETE).unlink(missing_ok=True)
    saved_world = None
    if STATE_FILE in files:
        store.download_files(key_prefix, dest, manifest, [STATE_FILE])
        saved_world = TrainState.from_file(dest / STATE_FILE).world_size
        missing = ranks_without_files(files, saved_world)
        if missing:
            raise StorageError(f"{uri} has no files of rank(s) {missing} (was it published by rank 0 alone?)")
    rels = [rel for rel in node_needs(files, layout.ranks, saved_world, layout.world_size)
            if rel not in (COMPLETE, STATE_FILE)]
    store.download_files(key_prefix, dest, manifest, rels)
    fetched = [*rels, STATE_FILE] if saved_world is not None else rels
    return len(fetched), sum(files[rel]["size"] for rel in fetched)
