"""One error path: a user's mistake on any rank ends the run with one line, no traceback, nothing written."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures import DEMO_DATA, base_env, launch, make_tiny_model, subset_squad

pytestmark = pytest.mark.slow

COMMON = ["--max_seq_length", "128", "--doc_stride", "32", "--mixed_precision", "no", "--dataloader_num_workers",
          "0", "--max_train_steps", "2", "--per_device_train_batch_size", "2"]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("errors")
    good = subset_squad(DEMO_DATA / "train.json", root / "train.json", 2)
    bad = json.loads(good.read_text())
    qa = bad["data"][0]["paragraphs"][0]["qas"]
    qa.append(dict(qa[0]))  # the same id twice: a user's data mistake
    (root / "dup.json").write_text(json.dumps(bad))
    return {"root": root, "model": make_tiny_model(root / "tiny"), "good": good, "bad": root / "dup.json",
            "dup_id": qa[0]["id"]}


def _written(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*")) if out.exists() else []


def test_bad_data_on_two_ranks_one_line_exit_nothing_written(work: dict[str, Path]) -> None:
    out = work["root"] / "out_dist"
    env = {**base_env(work["root"]), "WANDB_MODE": "offline", "WANDB_DIR": str(work["root"] / "wb")}
    proc = launch(["--model_name_or_path", str(work["model"]), "--train_file", str(work["bad"]),
                   "--validation_file", str(work["good"]), "--output_dir", str(out), "--report_to", "wandb",
                   "--deepspeed", "configs/deepspeed/zero2.json", *COMMON], tmp=work["root"], env=env, check=False)
    assert proc.returncode != 0
    worker_lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("data error:")]
    assert len(worker_lines) == 1, proc.stdout + proc.stderr  # rank 0 says it once; rank 1 exits quietly
    assert str(work["bad"]) in worker_lines[0] and str(work["dup_id"]) in worker_lines[0]
    assert "qa/" not in proc.stderr.split("ChildFailedError")[0]  # no traceback through our code
    assert _written(out) == []
    assert not (work["root"] / "wb").exists()  # W&B never started


@pytest.mark.parametrize("case", ["bad_data", "resume_incomplete", "missing_file"])
def test_single_process_user_errors_exit_2(work: dict[str, Path], case: str, tmp_path: Path,
                                           train_main: Callable[[list[str]], int], capfd: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``python train.py`` as one process, called in this one (nothing is written before the refusal)."""
    out = tmp_path / "out"
    args = ["--model_name_or_path", str(work["model"]), "--train_file", str(work["good"]), "--validation_file",
            str(work["good"]), "--output_dir", str(out), "--report_to", "none", "--deepspeed", "null", *COMMON]
    if case == "bad_data":
        args += ["--train_file", str(work["bad"])]
    elif case == "resume_incomplete":
        half = tmp_path / "ckpt" / "step_0000003"
        half.mkdir(parents=True)  # a checkpoint whose save never finished: no COMPLETE marker
        args += ["--resume_from_checkpoint", str(half)]
    else:
        args += ["--validation_file", str(tmp_path / "nope.json")]
    monkeypatch.chdir(tmp_path)
    rc = train_main(args)
    stderr = capfd.readouterr().err
    assert rc == 2, stderr
    lines = [ln for ln in stderr.splitlines() if " error: " in ln]
    assert len(lines) == 1 and lines[0].split(" error: ")[0] in ("config", "data"), stderr
    assert "Traceback" not in stderr
    expected = {"bad_data": str(work["dup_id"]), "resume_incomplete": "COMPLETE", "missing_file": "nope.json"}[case]
    assert expected in lines[0]
    assert _written(out) == []
