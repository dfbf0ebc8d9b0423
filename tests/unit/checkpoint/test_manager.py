"""Checkpointer rotation and resume choices without an Accelerator: the pure ordering rules, then rank 0's
share of save/resume (publish, find_resume) against real stores: a directory and a SeaweedFS bucket."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qa.checkpoint.local import LocalStore
from qa.checkpoint.manager import Checkpointer
from qa.checkpoint.rotation import by_step, checkpoints_to_delete, crash_leftovers, newest_first
from qa.checkpoint.state import COMPLETE, STATE_FILE, TrainState, complete_checkpoints, step_name, step_of
from qa.checkpoint.uploader import BackgroundUploader
from qa.config import Config, make_config
from qa.errors import ConfigError
from qa.trainer.setup import build_checkpointer
from store_tools import find_resume

Tree = Callable[..., Path]
BIG, BIGGER = "step_9999999", "step_10000000"  # names sort the other way round from steps past 10M


# -- pure ordering rules -----------------------------------------------------------------------------


def test_step_names() -> None:
    assert step_name(42) == "step_0000042" and step_of("step_0000042") == 42
    assert step_of(BIGGER) == 10_000_000
    for other in ("final", "step_", "step_12a", "run-b_step_0000001", "step_0000001.partial"):
        assert step_of(other) is None


def test_checkpoints_to_delete_orders_by_step_and_ignores_other_names() -> None:
    names = [BIGGER, "final", "step_0000005", BIG, "step_x", "best", "step_0000007"]
    assert by_step(names) == ["step_0000005", "step_0000007", BIG, BIGGER]
    assert checkpoints_to_delete(names, 2) == ["step_0000005", "step_0000007"]
    assert checkpoints_to_delete(names, 2, protected={"step_0000005"}) == ["step_0000007"]
    assert checkpoints_to_delete(names, 1, protected={BIG}) == ["step_0000005", "step_0000007"]
    assert checkpoints_to_delete(names, 4) == []
    assert checkpoints_to_delete(names, None) == []
    assert checkpoints_to_delete([], 1) == []


def test_resume_order_and_crash_leftovers() -> None:
    assert newest_first(["step_0000003", BIGGER, "final", BIG]) == [BIGGER, BIG, "step_0000003"]
    assert crash_leftovers([BIG, "step_0000002", BIGGER, "junk"], BIG) == ["step_0000002"]
    assert crash_leftovers(["step_0000002"], None) == []


def test_complete_checkpoints_are_ordered_by_step(tmp_path: Path) -> None:
    for name in (BIGGER, BIG, "step_0000100"):
        (tmp_path / name).mkdir()
        (tmp_path / name / COMPLETE).write_text("1")
    (tmp_path / "step_0000200").mkdir()  # no marker: not complete
    (tmp_path / "step_final").mkdir()
    (tmp_path / "step_final" / COMPLETE).write_text("1")
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_0000100", BIG, BIGGER]
    assert complete_checkpoints(tmp_path / "missing") == []


# -- rank 0's share of the Checkpointer ----------------------------------------------------------------


def config(tmp_path: Path, limit: int | None = 2) -> Config:
    return make_config(output_dir=str(tmp_path / "out"), run_name="run-a", save_total_limit=limit)


def checkpoint_tree(root: Path, step: int, tree: Tree) -> Path:
    """A checkpoint-like tree with the trainer state every checkpoint has (its world size says which ranks'
    files a node needs)."""
    path = tree(root)
    (path / STATE_FILE).write_text(TrainState(global_step=step).to_json())
    return path


def local_checkpoint(ckpt: Checkpointer, step: int, tree: Tree) -> Path:
    path = checkpoint_tree(ckpt.root / step_name(step), step, tree)
    (path / COMPLETE).write_text(f"{step}\n")
    return path


def put_in_store(store: Any, step: int, tree: Tree, tmp_path: Path, run: str = "run-a") -> None:
    src = checkpoint_tree(tmp_path / "src" / run / step_name(step), step, tree)
    store.upload_dir(src, f"{run}/checkpoints/{step_name(step)}")


def local_names(ckpt: Checkpointer) -> list[str]:
    return sorted(p.name for p in ckpt.root.iterdir())


def test_publish_rotates_local_and_store_and_keeps_the_resume_checkpoint(backend: Any, tree: Tree,
                                                                         tmp_path: Path) -> None:
    store = backend.store
    put_in_store(store, 1, tree, tmp_path)
    for step in (1, 2, 3):  # another run's checkpoints under the same location are never touched
        put_in_store(store, step, tree, tmp_path, run="run-b")
    with BackgroundUploader(store, max_attempts=1) as uploader:
        ckpt = build_checkpointer(config(tmp_path), None, store, uploader)
        resumed = find_resume(ckpt, "auto")  # nothing local: downloaded from the store
        assert resumed == ckpt.root / "step_0000001" and ckpt.resumed_from == "step_0000001"
        for step in (2, 3, 4, 5):
            ckpt.publish(local_checkpoint(ckpt, step, tree), TrainState(global_step=step))
            uploader.wait(timeout_s=60)
    # The store keeps the newest two plus the checkpoint this run resumed from; whole checkpoints go.
    assert store.list_complete("run-a/checkpoints") == ["step_0000001", "step_0000004", "step_0000005"]
    assert {k.split("/")[2] for k in store.list_keys("run-a")} == {"step_0000001", "step_0000004", "step_0000005"}
    assert store.list_complete("run-b/checkpoints") == ["step_0000001", "step_0000002", "step_0000003"]
    assert store.read_manifest("run-a/checkpoints/step_0000005")["metadata"] == {"global_step": 5, "epoch": 0}
    assert local_names(ckpt) == ["step_0000004", "step_0000005"]


def test_without_resume_exactly_the_newest_remain(backend: Any, tree: Tree, tmp_path: Path) -> None:
    store = backend.store
    with BackgroundUploader(store, max_attempts=1) as uploader:
        ckpt = build_checkpointer(config(tmp_path), None, store, uploader)
        for step in (1, 2, 3, 4):
            ckpt.publish(local_checkpoint(ckpt, step, tree), TrainState(global_step=step))
        uploader.wait(timeout_s=60)
    assert store.list_complete("run-a/checkpoints") == ["step_0000003", "step_0000004"]
    assert all(k.split("/")[2] in ("step_0000003", "step_0000004") for k in store.list_keys("run-a"))


def test_checkpoints_waiting_for_upload_are_kept(tmp_path: Path, tree: Tree) -> None:
    store = LocalStore(tmp_path / "store", create=True)
    gate = threading.Event()
    with BackgroundUploader(store, max_attempts=1) as uploader:
        ckpt = build_checkpointer(config(tmp_path), None, store, uploader)
        # Hold the upload thread: everything published meanwhile is pending.
        uploader.submit(tree(tmp_path / "first"), "gate", then=lambda: gate.wait(60))
        (ckpt.root / "step_0000000").mkdir(parents=True)  # a save a crash interrupted
        for step in (1, 2, 3, 4):
            ckpt.publish(local_checkpoint(ckpt, step, tree), TrainState(global_step=step))
        assert local_names(ckpt) == ["step_0000001", "step_0000002", "step_0000003", "step_0000004"]
        gate.set()
        uploader.wait(timeout_s=60)
        assert store.list_complete("run-a/checkpoints") == ["step_0000003", "step_0000004"]
        ckpt.publish(local_checkpoint(ckpt, 5, tree), TrainState(global_step=5))
        assert local_names(ckpt) == ["step_0000004", "step_0000005"]
        uploader.wait(timeout_s=60)
    assert store.list_complete("run-a/checkpoints") == ["step_0000004", "step_0000005"]


def test_no_limit_keeps_everything(tmp_path: Path, tree: Tree) -> None:
    store = LocalStore(tmp_path / "store", create=True)
    with BackgroundUploader(store, max_attempts=1) as uploader:
        ckpt = build_checkpointer(config(tmp_path, limit=None), None, store, uploader)
        for step in (1, 2, 3):
            ckpt.publish(local_checkpoint(ckpt, step, tree), TrainState(global_step=step))
        uploader.wait(timeout_s=60)
    assert store.list_complete("run-a/checkpoints") == ["step_0000001", "step_0000002", "step_0000003"]
    assert local_names(ckpt) == ["step_0000001", "step_0000002", "step_0000003"]


def test_find_resume_prefers_local_then_the_newest_intact_store_checkpoint(
    backend: Any, tree: Tree, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = backend.store
    ckpt = build_checkpointer(config(tmp_path), None, store)
    assert find_resume(ckpt, "auto") is None  # nothing anywhere: a fresh start
    for step in (3, 9_999_999, 10_000_000):
        put_in_store(store, step, tree, tmp_path)
    backend.write_raw(f"run-a/checkpoints/{BIGGER}/rng_state_0.pth", b"x" * 4096)  # newest is corrupt
    (ckpt.root / BIGGER).mkdir(parents=True)  # an incomplete local copy is never trusted
    with caplog.at_level(logging.ERROR):
        found = find_resume(ckpt, "auto")
    assert found == ckpt.root / BIG and (found / COMPLETE).is_file()
    assert store.uri_for(f"run-a/checkpoints/{BIGGER}/rng_state_0.pth") in caplog.text  # refused by name
    assert not (ckpt.root / BIGGER).exists() and ckpt.resumed_from == BIG
    # A complete local checkpoint wins over a newer one in the store.
    store.upload_dir(checkpoint_tree(tmp_path / "intact" / BIGGER, 10_000_000, tree), f"run-a/checkpoints/{BIGGER}")
    assert find_resume(ckpt, "auto") == ckpt.root / BIG
    assert find_resume(build_checkpointer(config(tmp_path), None, None), "auto") == ckpt.root / BIG


def test_find_resume_from_a_uri_or_a_path(tmp_path: Path, tree: Tree) -> None:
    store = LocalStore(tmp_path / "store", create=True)
    put_in_store(store, 7, tree, tmp_path, run="other")
    ckpt = build_checkpointer(config(tmp_path), None, None)
    found = find_resume(ckpt, store.uri_for("other/checkpoints/step_0000007"))
    assert found == ckpt.root / "step_0000007" and (found / COMPLETE).is_file()
    assert ckpt.resumed_from == "step_0000007"
    elsewhere = checkpoint_tree(tmp_path / "elsewhere" / "step_0000008", 8, tree)
    ckpt = build_checkpointer(config(tmp_path), None, None)
    assert find_resume(ckpt, str(elsewhere)) == elsewhere
    assert ckpt.resumed_from is None, "only a checkpoint in this run's directory is protected from rotation"
    (elsewhere / COMPLETE).unlink()
    with pytest.raises(ConfigError, match="no COMPLETE marker"):
        find_resume(ckpt, str(elsewhere))
    with pytest.raises(Exception, match="no complete upload"):
        find_resume(ckpt, store.uri_for("other/checkpoints/step_0000009"))


def test_with_a_store_local_rotation_ends_at_exactly_the_limit_once_uploads_finish(tmp_path: Path,
                                                                                   tree: Tree) -> None:
    store = LocalStore(tmp_path / "store", create=True)
    gate = threading.Event()
    with BackgroundUploader(store, max_attempts=1) as uploader:
        ckpt = build_checkpointer(config(tmp_path), None, store, uploader)
        uploader.submit(tree(tmp_path / "first"), "gate", then=lambda: gate.wait(60))  # uploads are slow
        for step in (1, 2, 3, 4):
            ckpt.publish(local_checkpoint(ckpt, step, tree), TrainState(global_step=step))
        assert local_names(ckpt) == ["step_0000001", "step_0000002", "step_0000003", "step_0000004"]
        gate.set()
        uploader.wait(timeout_s=60)
        # No further save comes (the run's last checkpoint): the local disk still ends at save_total_limit.
        assert local_names(ckpt) == ["step_0000003", "step_0000004"]
