"""Resuming on another world size, without launching ranks: what must match (the global batch, the data order),
how the saved position reads, and the optimizer repair after DeepSpeed's ZeRO-3 universal load."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from qa.checkpoint.reshard import check_global_batch, repair_optimizer_after_universal_load
from qa.checkpoint.resume import check_resume
from qa.checkpoint.state import STATE_FILE, TrainState
from qa.config import Config, make_config
from qa.data.global_batch import accumulation_for
from qa.errors import ConfigError


def test_accumulation_for_keeps_the_global_batch() -> None:
    assert accumulation_for(32, 4, 2) == 4
    assert accumulation_for(32, 4, 8) == 1
    assert accumulation_for(32, 4, 3) is None


def test_same_global_batch_passes_and_another_names_the_accumulation_that_keeps_it() -> None:
    check_global_batch(8, per_device=4, world_size=1, accumulation=2, saved_split="4 x 2 x 1", where="ckpt")
    check_global_batch(8, per_device=2, world_size=2, accumulation=2, saved_split="4 x 2 x 1", where="ckpt")
    with pytest.raises(ConfigError) as e:
        check_global_batch(8, per_device=4, world_size=1, accumulation=1, saved_split="4 x 2 x 1", where="ckpt")
    assert "global batch of 8" in str(e.value) and "gradient_accumulation_steps: 2" in str(e.value)
    # 3 ranks cannot make 8: no setting to suggest but the number of processes.
    with pytest.raises(ConfigError, match="launch a number of processes that divides 8"):
        check_global_batch(8, per_device=4, world_size=3, accumulation=1, saved_split="4 x 2 x 1", where="ckpt")
    with pytest.raises(ConfigError, match="per_device_train_batch_size: 2"):
        check_global_batch(8, per_device=3, world_size=4, accumulation=1, saved_split="4 x 2 x 1", where="ckpt")


def test_old_states_count_per_rank_batches_and_read_as_global_steps(tmp_path: Path) -> None:
    old = {"global_step": 12, "epoch": 1, "batches_in_epoch": 10, "world_size": 2,
           "data_order": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2}}
    (tmp_path / STATE_FILE).write_text(json.dumps(old))
    state = TrainState.from_file(tmp_path / STATE_FILE)
    assert state.steps_in_epoch == 5 and state.global_batch_size == 16
    cfg = make_config(per_device_train_batch_size=2, gradient_accumulation_steps=3)
    new = TrainState(world_size=4, data_order=cfg.data_order.key(4))
    assert new.global_batch_size == 24


def _checkpoint(tmp_path: Path, world: int, **cfg_kwargs: object) -> Path:
    saved_cfg = make_config(**cfg_kwargs)
    path = tmp_path / "step_0000003"
    path.mkdir()
    state = TrainState(global_step=3, steps_in_epoch=3, world_size=world, data_order=saved_cfg.data_order.key(world))
    (path / STATE_FILE).write_text(state.to_json())
    return path


class _Checker:
    """check_resume as a run of ``world`` processes with this config would call it."""

    def __init__(self, cfg: Config, world: int) -> None:
        self.cfg, self.world = cfg, world

    def check_resume(self, path: Path) -> TrainState:
        return check_resume(self.cfg.data_order, self.cfg.checkpoint.resume_weights_only, self.world, path)


def _checker(tmp_path: Path, world: int, **cfg_kwargs: object) -> _Checker:
    return _Checker(make_config(output_dir=str(tmp_path / "out"), **cfg_kwargs), world)


def test_check_resume_compares_the_global_batch_not_its_split(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path, 2, per_device_train_batch_size=4)
    assert _checker(tmp_path, 1, per_device_train_batch_size=4, gradient_accumulation_steps=2).check_resume(path)
    assert _checker(tmp_path, 4, per_device_train_batch_size=2).check_resume(path).steps_in_epoch == 3
    with pytest.raises(ConfigError, match="gradient_accumulation_steps: 2"):
        _checker(tmp_path, 1, per_device_train_batch_size=4).check_resume(path)
    with pytest.raises(ConfigError, match="different data order.*seed"):
        _checker(tmp_path, 1, per_device_train_batch_size=4, gradient_accumulation_steps=2, seed=1).check_resume(path)
    # Weights only: a new schedule and data order, anything goes.
    _checker(tmp_path, 3, per_device_train_batch_size=5, seed=1, resume_weights_only=True).check_resume(path)


def test_repair_gives_each_group_its_saved_hyperparameters_and_its_own_step(tmp_path: Path) -> None:
    """What DeepSpeed 0.19's ZeRO-3 universal load leaves behind: group 0's hyperparameters on every group and one
    step tensor shared by all; torch's foreach AdamW would then advance the shared step once per group."""
    decay, no_decay = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([{"params": [decay], "weight_decay": 0.01}, {"params": [no_decay], "weight_decay": 0.0}],
                            lr=1e-3, foreach=True)
    saved_groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    (tmp_path / "zero").mkdir()
    torch.save({"param_groups": saved_groups}, tmp_path / "zero" / "optimizer_state.pt")
    shared = torch.tensor(3.0)
    for p in (decay, no_decay):
        opt.state[p] = {"step": shared, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
    for g in opt.param_groups:
        g["weight_decay"] = 0.01  # group 0's value everywhere

    repair_optimizer_after_universal_load(SimpleNamespace(optimizer=SimpleNamespace(optimizer=opt)), tmp_path)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    decay.grad, no_decay.grad = torch.ones(3), torch.ones(2)
    opt.step()
    assert [float(opt.state[p]["step"]) for p in (decay, no_decay)] == [4.0, 4.0]
