"""Regression tests for what the fault campaign (bench/faults.py, docs/faults.md) found: objects of an
interrupted upload stayed in the store for ever; one part that never came held every later checkpoint of the run
back until s3_upload_timeout; a preemption at a checkpoint step saved that step a second time."""

from __future__ import annotations

import os
import time
from pathlib import Path

from checkpoint_nodes import node, wait_for
from qa.checkpoint.leftovers import unpublished_before
from qa.checkpoint.local import LocalStore
from qa.checkpoint.manifest import MANIFEST_NAME
from qa.checkpoint.parts import NodeLayout
from qa.checkpoint.state import COMPLETE, STATE_FILE, TrainState, step_name
from qa.checkpoint.uploader import BackgroundUploader
from qa.config import make_config
from qa.trainer.setup import build_checkpointer

PREFIX = "run/checkpoints"
SHARED = ["trainer_state.json", "pytorch_model/mp_rank_00_model_states.pt"]


def write_checkpoint(dirs: list[Path], step: int) -> None:
    """What save() leaves on two nodes' disks (rank r on node r): each rank's files, the shared ones on node 0."""
    for rank, d in enumerate(dirs):
        for rel in (f"random_states_{rank}.pkl", f"pytorch_model/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"):
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_bytes(os.urandom(1000 + rank))
    (dirs[0] / "pytorch_model" / "mp_rank_00_model_states.pt").write_bytes(os.urandom(500))
    (dirs[0] / STATE_FILE).write_text(TrainState(global_step=step, world_size=2).to_json())
    for d in dirs:
        (d / COMPLETE).write_text(f"{step}\n")




def test_unpublished_checkpoints_older_than_the_published_one_are_leftovers() -> None:
    keys = [f"{PREFIX}/step_0000002/a.bin", f"{PREFIX}/step_0000002/parts/ranks_0-0.json",  # cut upload
            f"{PREFIX}/step_0000004/a.bin", f"{PREFIX}/step_0000004/{MANIFEST_NAME}",  # published
            f"{PREFIX}/step_0000010/a.bin",  # older than the published step 11 (compared by number)
            f"{PREFIX}/step_0000012/a.bin",  # newer than the published one: a node may be uploading it now
            f"{PREFIX}/notes/x.txt"]  # not a checkpoint: never touched
    assert unpublished_before(keys, PREFIX, "step_0000011") == ["step_0000002", "step_0000010"]
    assert unpublished_before(keys, PREFIX, "step_0000011", keep={"step_0000002"}) == ["step_0000010"]
    assert unpublished_before(keys, PREFIX + "/", "step_0000004") == ["step_0000002"]
    assert unpublished_before(keys, PREFIX, "final") == []


def _publish_two_nodes(tmp_path: Path, store: LocalStore, ups: list[BackgroundUploader], step: int,
                       nodes_publishing: tuple[int, ...] = (0, 1)) -> list[Path]:
    layouts = [NodeLayout(0, 1, 2), NodeLayout(1, 1, 2)]
    nodes = [node(tmp_path, k, layouts[k], store, ups[k]) for k in (0, 1)]
    dirs = [n.root / step_name(step) for n in nodes]
    write_checkpoint(dirs, step)
    for k in nodes_publishing:
        nodes[k].publish(dirs[k], TrainState(global_step=step), save_id=f"save-{step}")
    return dirs


def test_objects_of_an_interrupted_upload_are_deleted_once_a_later_checkpoint_is_published(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store", create=True)
    # A crash cut the upload of step 2 (files, a part record, no manifest); step 9 is being uploaded right now.
    for name, rel in [("step_0000002", "random_states_0.pkl"), ("step_0000002", "parts/ranks_0-0.json"),
                      ("step_0000009", "random_states_1.pkl")]:
        target = store.root / PREFIX / name / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"left by an interrupted upload")
    with BackgroundUploader(store, max_attempts=1) as up0, BackgroundUploader(store, max_attempts=1) as up1:
        _publish_two_nodes(tmp_path, store, [up0, up1], 5)
        up1.wait(timeout_s=30)
        up0.wait(timeout_s=30)
    assert store.list_complete(PREFIX) == ["step_0000005"]
    assert store.list_keys(f"{PREFIX}/step_0000002") == []  # collected
    assert store.list_keys(f"{PREFIX}/step_0000009") == [f"{PREFIX}/step_0000009/random_states_1.pkl"]  # not older


def test_a_part_that_never_comes_does_not_hold_later_checkpoints_back(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store", create=True)
    timeout = 600.0  # s3_upload_timeout: what the stalled checkpoint used to wait for before the next one went up
    with BackgroundUploader(store, max_attempts=1, deadline_s=timeout, superseded_wait_s=0.5) as up0, \
            BackgroundUploader(store, max_attempts=1, deadline_s=timeout) as up1:
        t0 = time.monotonic()
        _publish_two_nodes(tmp_path, store, [up0, up1], 2, nodes_publishing=(0,))  # node 1's part never comes
        wait_for(lambda: bool(store.list_keys(f"{PREFIX}/step_0000002/parts")))
        _publish_two_nodes(tmp_path, store, [up0, up1], 4)
        wait_for(lambda: store.list_complete(PREFIX) == ["step_0000004"], timeout=60)
        up1.wait(timeout_s=30)
        up0.wait(timeout_s=30)  # the given-up checkpoint is no failure: a newer one made it
        elapsed = time.monotonic() - t0
    assert elapsed < 60, f"the next checkpoint waited {elapsed:.0f}s"
    assert up0.failed() == [] and up0.completed() == [store.uri_for(f"{PREFIX}/step_0000004")]
    assert store.list_keys(f"{PREFIX}/step_0000002") == []  # and what it had uploaded is collected


def test_a_part_that_comes_late_is_still_waited_for_without_a_later_checkpoint(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store", create=True)
    with BackgroundUploader(store, max_attempts=1, superseded_wait_s=0.0) as up0, \
            BackgroundUploader(store, max_attempts=1) as up1:
        dirs = _publish_two_nodes(tmp_path, store, [up0, up1], 3, nodes_publishing=(0,))
        wait_for(lambda: bool(store.list_keys(f"{PREFIX}/step_0000003/parts")))
        assert up0.pending()  # nothing queued behind it: it keeps waiting, however short superseded_wait_s is
        node(tmp_path, 1, NodeLayout(1, 1, 2), store, up1).publish(dirs[1], TrainState(global_step=3),
                                                                    save_id="save-3")
        up1.wait(timeout_s=30)
        up0.wait(timeout_s=30)
    assert store.list_complete(PREFIX) == ["step_0000003"]


def test_a_save_records_its_step_so_a_preemption_at_that_step_does_not_save_it_again(tmp_path: Path) -> None:
    """The campaign's nodes-mode SIGTERM at a checkpoint step: last_saved_step was never set, so the preemption
    path saved the step again, deleting the directory its first upload was reading; the first save's manifest
    then waited for a part that never came, past the launcher's shutdown timeout."""
    import torch
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    model = acc.prepare(torch.nn.Linear(2, 2))
    assert model is not None
    cfg = make_config(output_dir=str(tmp_path / "out"), run_name="run", save_total_limit=2)
    ckpt = build_checkpointer(cfg, acc)
    assert ckpt.last_saved_step is None
    path = ckpt.save(TrainState(global_step=3))
    assert (path / COMPLETE).is_file()
    assert ckpt.last_saved_step == 3  # what Trainer._preempt compares with before saving


def test_the_last_checkpoint_s_interrupted_upload_is_collected_at_the_end_of_the_run(tmp_path: Path) -> None:
    """Found by the fault campaign (seed 30437866): the upload of the last checkpoint was cut short and the resumed
    run only exported: no later checkpoint's manifest ever collected it. The end of a run collects every
    unpublished checkpoint, once no node uploads any more."""
    store = LocalStore(tmp_path / "store", create=True)
    with BackgroundUploader(store, max_attempts=1) as up0, BackgroundUploader(store, max_attempts=1) as up1:
        _publish_two_nodes(tmp_path, store, [up0, up1], 9)
        up1.wait(timeout_s=30)
        up0.wait(timeout_s=30)
    target = store.root / PREFIX / "step_0000012" / "random_states_0.pkl"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"left by an interrupted upload")
    cfg = make_config(output_dir=str(tmp_path / "out"), run_name="run", s3_uri=store.root.as_uri())
    build_checkpointer(cfg, None, store).collect_leftovers()
    assert store.list_keys(f"{PREFIX}/step_0000012") == []
    assert store.list_complete(PREFIX) == ["step_0000009"] and store.read_manifest(f"{PREFIX}/step_0000009")
