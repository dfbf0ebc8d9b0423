"""warmup_ratio and lr_scheduler_type: one warmup rule for our schedule, DeepSpeed's and the dry run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import SchedulerType

from configs import ds_sections
from qa.config import Config, make_config
from qa.distributed.accelerator import load_deepspeed_config
from qa.errors import ConfigError
from qa.model.optim import build_scheduler, warmup_steps
from qa.model.settings import UNSUPPORTED_SCHEDULERS
from qa.preflight.config_checks import load_and_check

REPO = Path(__file__).resolve().parents[3]
TRAIN = str(REPO / "data" / "demo" / "train.json")
DEV = str(REPO / "data" / "demo" / "dev.json")




def _base(*extra: str) -> list[str]:
    return ["--train_file", TRAIN, "--validation_file", DEV, "--deepspeed", "null", *extra]


def _lrs(cfg: Config, total: int) -> list[float]:
    """The learning rate after each of ``total`` optimizer steps under build_scheduler."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=cfg.optimizer.learning_rate)
    sched = build_scheduler(cfg.optimizer, opt, total, None)
    out = []
    for _ in range(total):
        opt.step()
        sched.step()
        out.append(opt.param_groups[0]["lr"])
    return out


def test_warmup_ratio_of_50_steps_warms_up_for_5(tmp_path: Path) -> None:
    cfg = load_and_check(_base("--warmup_ratio", "0.1", "--learning_rate", "1e-3"))
    assert cfg.optimizer.num_warmup_steps == 0 and warmup_steps(cfg.optimizer, 50) == 5
    lrs = _lrs(cfg, 50)
    assert max(range(50), key=lrs.__getitem__) + 1 == 5  # peak after the 5th step
    assert lrs[4] == pytest.approx(1e-3) and lrs[:4] == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4])
    # The same count where DeepSpeed's scheduler owns the schedule ("auto" values filled from the run config).
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}, "optimizer": {"type": "AdamW", "params": {"lr": "auto"}},
                   "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_num_steps": "auto",
                                                                     "total_num_steps": "auto"}}}))
    filled = load_deepspeed_config(*ds_sections(make_config(deepspeed=str(ds), warmup_ratio=0.1)), world_size=1,
                                   precision="no", num_training_steps=50)
    assert filled["scheduler"]["params"]["warmup_num_steps"] == 5
    assert filled["scheduler"]["params"]["total_num_steps"] == 50
    # num_warmup_steps alone keeps its meaning; float error does not add a step (0.1 * 30 = 3.0000000000000004).
    assert warmup_steps(make_config(num_warmup_steps=7).optimizer, 50) == 7
    assert warmup_steps(make_config(warmup_ratio=0.1).optimizer, 30) == 3
    assert warmup_steps(make_config(warmup_ratio=0.1).optimizer, 31) == 4  # rounded up, as transformers does


def test_warmup_ratio_and_steps_are_exclusive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^num_warmup_steps \(5\) and warmup_ratio \(0.1\) are both set"):
        load_and_check(_base("--num_warmup_steps", "5", "--warmup_ratio", "0.1"))
    y = tmp_path / "run.yaml"
    y.write_text(f"train_file: {TRAIN}\nvalidation_file: {DEV}\ndeepspeed: null\nnum_warmup_steps: 5\n")
    assert load_and_check(["--config", str(y), "--num_warmup_steps", "0", "--warmup_ratio", "0.06"]).optimizer.warmup_ratio == 0.06
    with pytest.raises(ConfigError, match=r"^warmup_ratio: must be in \[0, 1\]"):
        load_and_check(_base("--warmup_ratio", "1.5"))


@pytest.mark.parametrize("name", [s.value for s in SchedulerType])
def test_every_scheduler_type_is_offered_and_runs_or_is_refused(name: str) -> None:
    """The choices come from transformers' enum; the ones our loop cannot step are refused up front."""
    if name in UNSUPPORTED_SCHEDULERS:
        with pytest.raises(ConfigError, match=rf"^lr_scheduler_type: {name} (steps on|needs)"):
            load_and_check(_base("--lr_scheduler_type", name))
        with pytest.raises((TypeError, ValueError)):  # what the job would hit minutes in
            _lrs(make_config(lr_scheduler_type=name, num_warmup_steps=5), 50)
        return
    cfg = load_and_check(_base("--lr_scheduler_type", name, "--warmup_ratio", "0.1"))
    lrs = _lrs(cfg, 50)
    if name == "constant":  # transformers' constant schedule has no warmup
        assert lrs == [cfg.optimizer.learning_rate] * 50
    else:
        assert lrs[4] == pytest.approx(cfg.optimizer.learning_rate) and lrs[0] < lrs[4]  # warmed up over 5 steps
