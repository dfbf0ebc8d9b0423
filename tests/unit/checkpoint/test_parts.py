"""Checkpoints of several nodes without a shared filesystem: which node publishes and fetches each file, the
manifest written only after every node's part, and resuming from the store alone. Real stores (a directory),
real uploader threads; each "node" is a Checkpointer with its own output_dir, and the collectives of a resume
are played by threads meeting at a barrier."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from checkpoint_nodes import node, wait_for
from qa.checkpoint.local import LocalStore
from qa.checkpoint.manager import Checkpointer
from qa.checkpoint.manifest import MANIFEST_NAME
from qa.checkpoint.parts import (
    NodeLayout,
    PartUpload,
    fetch_part,
    file_rank,
    layout_from_local_indices,
    node_needs,
    node_uploads,
    ranks_without_files,
    usable_here,
)
from qa.checkpoint.state import COMPLETE, STATE_FILE, TrainState, step_name
from qa.checkpoint.store import StorageError, UploadError
from qa.checkpoint.uploader import BackgroundUploader
from store_tools import find_resume

SHARED = ["COMPLETE", "trainer_state.json", "config.yaml", "scheduler.bin", "pytorch_model/mp_rank_00_model_states.pt",
          "pytorch_model/latest", "model/model.safetensors"]


def rank_files(rank: int) -> list[str]:
    return [f"random_states_{rank}.pkl", f"pytorch_model/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"]


# -- pure rules ----------------------------------------------------------------------------------------


def test_file_ownership_by_rank() -> None:
    assert [file_rank(rel) for rel in rank_files(3)] == [3, 3]
    assert file_rank("pytorch_model/bf16_zero_pp_rank_12_mp_rank_00_optim_states.pt") == 12
    assert file_rank("pytorch_model/zero_pp_rank_2_mp_rank_00_model_states.pt") == 2  # ZeRO-3 parameters
    assert all(file_rank(rel) is None for rel in SHARED)
    assert file_rank("xrandom_states_1.pkl") is None and file_rank("random_states_1.pkl.bak") is None


def test_every_file_is_published_by_one_node_and_fetched_by_those_that_read_it() -> None:
    world = 4
    rels = SHARED + [rel for r in range(world) for rel in rank_files(r)]
    nodes = [NodeLayout(0, 2, world), NodeLayout(2, 2, world)]
    published = [node_uploads(rels, node.ranks) for node in nodes]
    assert sorted(published[0] + published[1]) == sorted(rels), "each file exactly once"
    assert set(published[1]) == {rel for r in (2, 3) for rel in rank_files(r)}
    # Every node reads the shared files and its own ranks' files; another world size reads everything.
    assert set(node_needs(rels, nodes[1].ranks, 4, 4)) == set(SHARED) | set(published[1])
    assert node_needs(rels, nodes[1].ranks, 2, 4) == rels
    assert node_needs(rels, nodes[1].ranks, None, 4) == rels
    assert ranks_without_files(rels, world) == []
    assert ranks_without_files(SHARED + rank_files(0), 2) == [1]  # rank 0 published alone
    assert ranks_without_files(SHARED, 2) == []  # no per-rank files at all: nothing to check


def test_node_layout_from_local_indices() -> None:
    assert layout_from_local_indices([0], 0) == NodeLayout(0, 1, 1)
    assert layout_from_local_indices([0, 1, 0, 1], 3) == NodeLayout(2, 2, 4)
    assert layout_from_local_indices([0, 1, 2, 0], 3) == NodeLayout(3, 1, 4)  # nodes of different sizes
    assert NodeLayout(2, 2, 4).part_name == "ranks_2-3.json" and not NodeLayout(2, 2, 4).only_node
    with pytest.raises(ValueError, match="contiguously"):
        layout_from_local_indices([0, 0, 1, 1], 0)  # round-robin numbering: rank 2 is on node 0


# -- two nodes, one store ------------------------------------------------------------------------------


def write_checkpoint(dirs: list[Path], step: int, world: int, node_of: Callable[[int], int]) -> None:
    """What save() leaves on each node's disk: rank r's files on its node, the shared ones on rank 0's, and the
    COMPLETE marker on every node. ``dirs`` may repeat one directory (a shared filesystem)."""
    for rank in range(world):
        for rel in rank_files(rank):
            path = dirs[node_of(rank)] / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(1000 + rank))
    for rel in SHARED:
        path = dirs[0] / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(500))
    (dirs[0] / STATE_FILE).write_text(TrainState(global_step=step, world_size=world).to_json())
    for d in dirs:
        (d / COMPLETE).write_text(f"{step}\n")




def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_is_written_only_after_every_nodes_part(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store", create=True)
    layouts = [NodeLayout(0, 1, 2), NodeLayout(1, 1, 2)]
    with BackgroundUploader(store, max_attempts=1) as up0, BackgroundUploader(store, max_attempts=1) as up1:
        nodes = [node(tmp_path, 0, layouts[0], store, up0), node(tmp_path, 1, layouts[1], store, up1)]
        dirs = [n.root / step_name(5) for n in nodes]
        write_checkpoint(dirs, 5, 2, node_of=lambda r: r)
        state = TrainState(global_step=5)
        nodes[0].publish(dirs[0], state, save_id="save-a")
        prefix = "run/checkpoints/step_0000005"
        wait_for(lambda: (store.root / prefix / "parts" / "ranks_0-0.json").is_file())
        assert up0.pending(), "rank 0 waits for the other node's part"
        assert store.list_complete("run/checkpoints") == [] and not (store.root / prefix / MANIFEST_NAME).exists()
        nodes[1].publish(dirs[1], state, save_id="save-a")
        up1.wait(timeout_s=30)
        up0.wait(timeout_s=30)
    manifest = store.read_manifest(prefix)
    expected = {rel: dirs[file_rank(rel) or 0] / rel for rel in SHARED + rank_files(0) + rank_files(1)}
    assert set(manifest["files"]) == set(expected), "every rank's files, each once"
    for rel, path in expected.items():
        assert manifest["files"][rel] == {"size": path.stat().st_size, "sha256": sha(path)}
    assert manifest["metadata"] == {"global_step": 5, "epoch": 0}
    keys = store.list_keys(prefix)
    assert len(keys) == len(expected) + 1 + 2  # the files, the manifest, one part record per node

    # Node 1 resumes from the store alone, with only its rank's files and the shared ones.
    for n in nodes:
        shutil.rmtree(n.root)
    fresh = node(tmp_path, 1, layouts[1], store)
    found = find_resume(fresh, "auto")
    assert found == fresh.root / "step_0000005"
    got = {p.relative_to(found).as_posix() for p in found.rglob("*") if p.is_file()}
    assert got == set(SHARED) | set(rank_files(1))
    assert all(sha(found / rel) == manifest["files"][rel]["sha256"] for rel in got if rel != COMPLETE)
    assert usable_here(found, layouts[1]) and not usable_here(found, layouts[0])


def test_a_checkpoint_missing_a_part_never_gets_a_manifest(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store", create=True)
    prefix = "run/checkpoints/step_0000002"
    # Node 1's part from an earlier save of the same step (a run that crashed) must not stand in for this one.
    store.put_record(f"{prefix}/parts/ranks_1-1.json",
                     {"save_id": "earlier", "ranks": [1, 1], "world_size": 2, "files": {}})
    with BackgroundUploader(store, max_attempts=1, deadline_s=0.5) as up0:
        rank0 = node(tmp_path, 0, NodeLayout(0, 1, 2), store, up0)
        path = rank0.root / step_name(2)
        write_checkpoint([path, tmp_path / "node1-disk"], 2, 2, node_of=lambda r: r)
        rank0.publish(path, TrainState(global_step=2), save_id="this-save")
        with pytest.raises(UploadError):
            up0.wait(timeout_s=30)
    assert store.list_complete("run/checkpoints") == []
    assert not (store.root / prefix / MANIFEST_NAME).exists()
    assert (store.root / prefix / "random_states_0.pkl").is_file()  # its own part is there, unpublished


def test_on_a_shared_filesystem_each_file_is_uploaded_once(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store", create=True)
    shared = tmp_path / "shared" / step_name(4)
    world, layouts = 4, [NodeLayout(0, 2, 4), NodeLayout(2, 2, 4)]
    write_checkpoint([shared, shared], 4, world, node_of=lambda r: r // 2)
    stop = threading.Event()
    parts = [PartUpload(store, shared, "ckpt", layout, save_id="s", metadata=None, wait_s=30, stop=stop)
             for layout in layouts]
    parts[1]()
    parts[0]()
    records = [store.read_record(f"ckpt/parts/{layout.part_name}") for layout in layouts]
    assert records[0] is not None and records[1] is not None
    assert not set(records[0]["files"]) & set(records[1]["files"]), "no file uploaded by both nodes"
    assert set(records[1]["files"]) == {rel for r in (2, 3) for rel in rank_files(r)}
    assert set(store.read_manifest("ckpt")["files"]) == set(records[0]["files"]) | set(records[1]["files"])


# -- resuming together ---------------------------------------------------------------------------------


class ThreadCollectives:
    """What the ranks' collectives do, for threads: gather every value; rank 0 decides and everyone hears it."""

    def __init__(self, world: int) -> None:
        self.barrier = threading.Barrier(world, timeout=60)
        self.slots: list[Any] = [None] * world

    def gather(self, rank: int, value: Any) -> list[Any]:
        self.slots[rank] = value
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()
        return out

    def decide(self, rank: int, fn: Callable[[], Any]) -> Any:
        return self.gather(rank, fn() if rank == 0 else None)[0]


def resolve_on_every_node(nodes: list[Checkpointer], spec: str) -> list[Any]:
    coll = ThreadCollectives(len(nodes))
    results: list[Any] = [None] * len(nodes)

    def run(k: int) -> None:
        try:
            results[k] = nodes[k].resume_finder().find(spec, gather=lambda v: coll.gather(k, v),
                                                         decide=lambda fn: coll.decide(k, fn), local_main=True)
        except Exception as e:  # noqa: BLE001 - compared by the test
            results[k] = e
            coll.barrier.abort()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(nodes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def publish_in_store(store: Any, tmp_path: Path, step: int, layouts: list[NodeLayout]) -> None:
    dirs = [tmp_path / "saved" / f"node{k}" / step_name(step) for k in range(len(layouts))]
    write_checkpoint(dirs, step, 2, node_of=lambda r: r)
    stop = threading.Event()
    parts = [PartUpload(store, d, f"run/checkpoints/{step_name(step)}", layout, save_id=f"s{step}", metadata=None,
                        wait_s=30, stop=stop) for d, layout in zip(dirs, layouts, strict=True)]
    for part in reversed(parts):  # rank 0's node last: its call writes the manifest
        part()


def test_a_bad_part_on_one_node_makes_every_node_fall_back_together(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store", create=True)
    layouts = [NodeLayout(0, 1, 2), NodeLayout(1, 1, 2)]
    for step in (3, 6):
        publish_in_store(store, tmp_path, step, layouts)
    victim = store.root / "run/checkpoints/step_0000006/random_states_1.pkl"
    victim.write_bytes(b"x" * victim.stat().st_size)  # only node 1 reads it
    nodes = [node(tmp_path, k, layout, store) for k, layout in enumerate(layouts)]
    results = resolve_on_every_node(nodes, "auto")
    assert results == [n.root / "step_0000003" for n in nodes]
    for n in nodes:
        assert not (n.root / "step_0000006").exists(), "no node keeps a checkpoint some node could not fetch"
        assert usable_here(n.root / "step_0000003", n.layout)
    # Both nodes now hold their copy: the next resume needs the store no more, and agrees on it.
    store.delete_prefix("run/checkpoints/step_0000003")
    assert resolve_on_every_node(nodes, "auto") == results
    # An explicit checkpoint that one node cannot fetch is a user error on every node, naming that node.
    uri = store.uri_for("run/checkpoints/step_0000006")
    errors = resolve_on_every_node(nodes, uri)
    assert all("node of rank 1" in str(e) and "random_states_1.pkl is corrupt" in str(e) for e in errors)


def test_a_checkpoint_published_by_rank_0_alone_is_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store", create=True)
    dirs = [tmp_path / "n0" / "step_0000001", tmp_path / "n1" / "step_0000001"]
    write_checkpoint(dirs, 1, 2, node_of=lambda r: r)
    store.upload_dir(dirs[0], "old")  # what rank 0's uploader alone used to publish: a manifest without rank 1
    for layout in (NodeLayout(0, 1, 2), NodeLayout(1, 1, 2)):
        with pytest.raises(StorageError, match=r"no files of rank\(s\) \[1\]"):
            fetch_part(store, "old", tmp_path / f"fetch{layout.first}", layout)
