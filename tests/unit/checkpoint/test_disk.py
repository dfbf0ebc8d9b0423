"""Full disks on a real small filesystem (tmpfs): the save checks room first, a failed write is named and leaves no
partial directory, and the previous checkpoint stays intact. One process, a real Accelerator, a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from small_fs import fill, small_filesystem

from qa.checkpoint.disk import DiskError, describe_write_error, estimate_checkpoint_bytes
from qa.checkpoint.manager import Checkpointer
from qa.checkpoint.state import COMPLETE, TrainState
from qa.config import make_config
from qa.trainer.setup import build_checkpointer


@pytest.fixture
def saver(tmp_path: Path):
    from accelerate import Accelerator

    with small_filesystem(tmp_path / "disk", 30) as disk:
        acc = Accelerator(cpu=True)
        torch.manual_seed(0)
        model = torch.nn.Linear(512, 512)  # 263k parameters: ~1 MiB of weights, ~3 MiB with Adam's moments
        opt = torch.optim.AdamW(model.parameters())
        model(torch.ones(1, 512)).sum().backward()
        opt.step()  # Adam's moments exist, so a checkpoint holds them
        model, opt = acc.prepare(model, opt)
        cfg = make_config(output_dir=str(disk / "out"), train_file="t.json", save_total_limit=None)
        yield build_checkpointer(cfg, acc), disk


def _names(ckpt: Checkpointer) -> list[str]:
    return sorted(p.name for p in ckpt.root.iterdir())


def test_no_room_for_the_next_checkpoint_stops_before_writing(saver) -> None:
    ckpt, disk = saver
    first = ckpt.save(TrainState(global_step=1))
    assert first is not None and (first / COMPLETE).exists()
    assert ckpt.expected_bytes is not None and ckpt.expected_bytes > 3 * 10**6  # the real size, for the next save
    fill(disk, leave_bytes=ckpt.expected_bytes // 2)
    with pytest.raises(DiskError) as info:
        ckpt.save(TrainState(global_step=2))
    message = str(info.value)
    assert "\n" not in message
    assert f"not enough space in {ckpt.root} for the next checkpoint: needs {ckpt.expected_bytes} bytes" in message
    assert "step_0000001 is intact" in message
    assert _names(ckpt) == ["step_0000001"]  # nothing of step 2 was written


def test_a_write_that_runs_out_of_space_is_named_and_leaves_no_partial_directory(saver) -> None:
    ckpt, disk = saver
    ckpt.save(TrainState(global_step=1))
    # An estimate that is too small (as a first save's can be) lets the save start; the disk fills mid-write.
    ckpt.expected_bytes = 1
    fill(disk, leave_bytes=512 * 1024)
    with pytest.raises(DiskError) as info:
        ckpt.save(TrainState(global_step=2))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"checkpoint at step 2: saving {ckpt.root / 'step_0000002'} failed: no space left "
                              "on device")
    assert "the partial directory was removed" in message and "step_0000001 is intact" in message
    assert _names(ckpt) == ["step_0000001"] and (ckpt.root / "step_0000001" / COMPLETE).exists()


def test_resume_removes_partial_checkpoints_of_earlier_runs(saver) -> None:
    ckpt, disk = saver
    ckpt.save(TrainState(global_step=1))
    partial = ckpt.root / "step_0000002"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 10**6)  # a save that died: no COMPLETE
    named = ckpt.root / "step_0000003"
    named.mkdir()
    assert ckpt.resolve("auto") == ckpt.root / "step_0000001"
    assert _names(ckpt) == ["step_0000001"]
    named.mkdir()
    ckpt.remove_partial(keep=named)  # a directory the user named is left for resume to explain
    assert named.exists()


def test_estimate_and_error_words() -> None:
    assert estimate_checkpoint_bytes(10, deepspeed=False, mixed_precision=False, export=False) == 120
    assert estimate_checkpoint_bytes(10, deepspeed=True, mixed_precision=True, export=True) == 180
    import errno

    err = OSError(errno.EIO, "Input/output error")
    assert describe_write_error(err, Path("/")) == "EIO: Input/output error"
    assert describe_write_error(OSError(errno.ENOSPC, "x"), Path("/")).startswith("no space left on device")


def test_with_a_store_the_user_may_skip_a_checkpoint_and_keep_training(saver, tmp_path: Path) -> None:
    import dataclasses

    from qa.checkpoint.local import LocalStore

    ckpt, disk = saver
    ckpt.save(TrainState(global_step=1))
    ckpt.settings = dataclasses.replace(ckpt.settings, keep_training_when_disk_full=True)
    ckpt.store = LocalStore(tmp_path / "store", create=True)
    fill(disk, leave_bytes=ckpt.expected_bytes // 2)
    assert ckpt.save(TrainState(global_step=2)) is None  # skipped, no error: the loop goes on
    assert _names(ckpt) == ["step_0000001"]
    (disk / "filler.bin").unlink()
    assert ckpt.save(TrainState(global_step=3)) == ckpt.root / "step_0000003"  # room again: saved
