"""A ZeRO checkpoint resumes on another number of ranks with the same global batch: 2 -> 1 (ZeRO-2) and 1 -> 2
(ZeRO-3), each against the uninterrupted run of the same global batch.

What is checked, and why each check would fail if that state were lost:

* the step: the resumed run logs steps 4..6 only and saves its step-6 checkpoint with ``global_step`` 6;
* the LR schedule: ``train/lr`` at every resumed step equals the uninterrupted run's exactly (a restarted
  schedule would warm up again or decay from the start);
* the data position: the loss at the first resumed step (computed from the restored weights, before any update)
  matches, ``train/epoch`` matches, and the samples and tokens seen by step 6 are the same numbers (another
  batch has other lengths);
* the optimizer: the step-6 checkpoints of both runs, consolidated per parameter, hold the same fp32 weights
  and Adam moments, and Adam's step count is 6 in both. A fresh optimizer would count 3 steps and hold about
  half the second moment (``1 - 0.999^3`` vs ``1 - 0.999^6``), and its first update (about ``lr`` per weight,
  whatever the gradient) would move the loss at the next steps far outside the tolerance. That makes these
  checks stronger than comparing against a fresh-optimizer resume, at no extra run.

Why a tolerance and not bit-exact: RNG streams are per rank and cannot carry over to another number of ranks
(the model here has no dropout, which is what makes the runs comparable at all), and a gradient summed over M
ranks adds its terms in another order than over N ranks, or than accumulation on one rank. On this CPU/gloo
set-up the sums happen to come out identical, but nothing guarantees that in general (NCCL picks its own
reduction order, and fp16 amplifies the difference), so the test allows 1e-5 relative, as
test_train_e2e.test_world_size_and_accumulation_equivalence does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fixtures import DEMO_DATA, launch, make_tiny_model, subset_squad
from qa.checkpoint.reshard import universal_copy

pytestmark = pytest.mark.slow

COMMON = ["--max_seq_length", "128", "--doc_stride", "32", "--report_to", "none", "--mixed_precision", "no",
          "--dataloader_num_workers", "0", "--logging_steps", "1", "--per_device_train_batch_size", "4",
          "--learning_rate", "2e-3", "--do_eval", "false", "--checkpointing_steps", "3", "--max_train_steps", "6",
          "--run_name", "world-size"]
TOL = {"rel": 1e-5, "abs": 1e-7}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("world_size")
    return {"root": root, "model": make_tiny_model(root / "tiny", dropout=0.0),
            "train": subset_squad(DEMO_DATA / "train.json", root / "train.json", 6)}


def _run(work: dict[str, Path], out: Path, stage: str, nproc: int, accumulation: int, *extra: str) -> str:
    proc = launch(["--model_name_or_path", str(work["model"]), "--train_file", str(work["train"]),
                   "--output_dir", str(out), "--deepspeed", f"configs/deepspeed/{stage}.json",
                   "--gradient_accumulation_steps", str(accumulation), *COMMON, *extra], tmp=work["root"], nproc=nproc)
    return proc.stdout + proc.stderr


def _metrics(out: Path) -> dict[int, dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "train/loss" in r}


def _state(out: Path, step: int) -> dict:
    return json.loads((out / "checkpoints" / f"step_{step:07d}" / "trainer_state.json").read_text())


def _optimizer_state(checkpoint: Path, dest: Path) -> dict[str, dict[str, torch.Tensor]]:
    """fp32 weights and Adam moments per parameter, whatever the world size that saved them."""
    zero = universal_copy(checkpoint, dest) / "pytorch_model" / "zero"
    out = {}
    for param in sorted(p for p in zero.iterdir() if p.is_dir()):
        out[param.name] = {}
        for key in ("fp32", "exp_avg", "exp_avg_sq"):
            value = torch.load(param / f"{key}.pt", map_location="cpu", weights_only=False)
            out[param.name][key] = value["param"] if isinstance(value, dict) else value  # ZeRO-2 / ZeRO-3 layout
    return out


def _adam_steps(checkpoint: Path) -> set[float]:
    steps = set()
    for f in (checkpoint / "pytorch_model").glob("*optim_states.pt"):
        sd = torch.load(f, map_location="cpu", weights_only=False)["optimizer_state_dict"]
        inner = sd.get("base_optimizer_state") or sd["optimizer_state_dict"]  # ZeRO-2 / ZeRO-3: torch's state
        steps |= {float(state["step"]) for state in inner["state"].values()}
    return steps


def _assert_resumed_like_uninterrupted(work: dict[str, Path], reference: Path, resumed: Path, log: str,
                                       saved_on: int, now_on: int) -> None:
    assert f"from {saved_on} to {now_on} ranks" in log  # the re-sharding path ran, not a plain load
    ref, got = _metrics(reference), _metrics(resumed)
    assert sorted(got) == [4, 5, 6]
    for step in (4, 5, 6):
        assert got[step]["train/lr"] == ref[step]["train/lr"], f"step {step}: schedule"
        assert got[step]["train/epoch"] == pytest.approx(ref[step]["train/epoch"]), f"step {step}: data position"
        assert got[step]["train/loss"] == pytest.approx(ref[step]["train/loss"], **TOL), f"step {step}: loss"
    assert ref[5]["train/loss"] != ref[4]["train/loss"]  # the losses do move: matching them means something
    ref_state, got_state = _state(reference, 6), _state(resumed, 6)
    for key in ("global_step", "epoch", "steps_in_epoch", "samples_seen", "tokens_seen"):
        assert got_state[key] == ref_state[key], key
    assert got_state["world_size"] == now_on and got_state["data_order"]["global_batch_size"] == 8
    ref_ckpt, got_ckpt = reference / "checkpoints" / "step_0000006", resumed / "checkpoints" / "step_0000006"
    assert _adam_steps(ref_ckpt) == _adam_steps(got_ckpt) == {6.0}
    want = _optimizer_state(ref_ckpt, work["root"] / f"uc_{reference.name}")
    have = _optimizer_state(got_ckpt, work["root"] / f"uc_{resumed.name}")
    assert want.keys() == have.keys() and len(want) > 10
    for name in want:
        for key, value in want[name].items():
            torch.testing.assert_close(have[name][key], value, rtol=1e-4, atol=1e-8, msg=f"{name} {key}")
    assert not list((resumed / "checkpoints").glob(".universal-*"))  # the scratch copy is gone


def test_zero2_checkpoint_of_two_ranks_resumes_on_one_rank(work: dict[str, Path]) -> None:
    reference = work["root"] / "zero2_2ranks"
    _run(work, reference, "zero2", 2, 1)
    resumed = work["root"] / "zero2_resumed_1rank"
    log = _run(work, resumed, "zero2", 1, 2,  # 4 per device x 1 rank x 2 accumulation = the saved 8
               "--resume_from_checkpoint", str(reference / "checkpoints" / "step_0000003"))
    _assert_resumed_like_uninterrupted(work, reference, resumed, log, saved_on=2, now_on=1)


def test_zero3_checkpoint_of_one_rank_resumes_on_two_ranks(work: dict[str, Path]) -> None:
    reference = work["root"] / "zero3_1rank"
    _run(work, reference, "zero3", 1, 2)
    resumed = work["root"] / "zero3_resumed_2ranks"
    log = _run(work, resumed, "zero3", 2, 1,
               "--resume_from_checkpoint", str(reference / "checkpoints" / "step_0000003"))
    _assert_resumed_like_uninterrupted(work, reference, resumed, log, saved_on=1, now_on=2)
