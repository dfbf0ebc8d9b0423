"""The dry run: exact counts on the demo data, the ZeRO memory formula, and every inconsistent launch refused
with a message that names what to change."""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures import DEMO_DATA, REPO, launch, make_tiny_model
from qa.config import Config, make_config
from qa.errors import ConfigError
from qa.preflight.checks import check_plan
from qa.preflight.config_checks import load_and_check
from qa.preflight.counts import Schedule, training_schedule
from qa.preflight.memory import estimate_memory
from qa.preflight.report import describe_plan, format_bytes

ZERO2 = str(REPO / "configs" / "deepspeed" / "zero2.json")
ZERO3 = str(REPO / "configs" / "deepspeed" / "zero3.json")
ACCELERATE_ENV = ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_CONFIG_FILE",
                  "ACCELERATE_CONFIG_DS_FIELDS", "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL", "WORLD_SIZE",
                  "RANK", "LOCAL_RANK")


@pytest.fixture(autouse=True)
def _no_launcher_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ACCELERATE_ENV:
        monkeypatch.delenv(key, raising=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _cfg(tiny: Path | None = None, *extra: str) -> Config:
    args = ["--train_file", str(DEMO_DATA / "train.json"), "--validation_file", str(DEMO_DATA / "dev.json"),
            "--max_seq_length", "256", "--doc_stride", "64", "--per_device_train_batch_size", "8",
            "--num_train_epochs", "3", "--mixed_precision", "'no'", "--deepspeed", ZERO2,
            "--report_to", "none", "--output_dir", "/nonexistent/never-created"]
    if tiny is not None:
        args += ["--model_name_or_path", str(tiny)]
    return load_and_check(args + list(extra))


def _row(plan: str, key: str, section: str | None = None) -> str:
    """The value of ``  key   value`` in the plan (in ``section`` if given)."""
    text = plan if section is None else plan.split("\n" + section, 1)[1]
    m = re.search(rf"^  {re.escape(key)} +(.*)$", text, re.M)
    assert m, f"no row {key!r} in:\n{plan}"
    return m.group(1)


def _windows(path: Path, tokenizer, max_len: int, stride: int) -> tuple[int, int]:
    """(examples, windows) counted straight from the tokenizer, independently of qa.data."""
    data = json.loads(path.read_text())["data"]
    n_ex = n_win = 0
    for art in data:
        for para in art["paragraphs"]:
            for qa in para["qas"]:
                enc = tokenizer(qa["question"].lstrip(), para["context"], truncation="only_second",
                                max_length=max_len, stride=stride, return_overflowing_tokens=True)
                n_ex += 1
                n_win += len(enc["input_ids"])
    return n_ex, n_win


# ----------------------------------------------------------------------------------------------------------
# The plan's numbers
# ----------------------------------------------------------------------------------------------------------


def test_plan_counts_features_steps_and_memory_on_the_demo_data(tiny: Path) -> None:
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    cfg = _cfg(tiny, "--gradient_accumulation_steps", "2", "--checkpointing_steps", "10",
               "--s3_uri", "s3://bucket/prefix", "--run_name", "exp1")
    plan = describe_plan(cfg, world_size=2, cuda=False)

    tok = AutoTokenizer.from_pretrained(tiny)
    n_train_ex, n_train = _windows(DEMO_DATA / "train.json", tok, 256, 64)
    n_eval_ex, n_eval = _windows(DEMO_DATA / "dev.json", tok, 256, 64)
    assert n_train > n_train_ex  # the demo has contexts longer than one window
    assert f"{n_train_ex:,} examples -> {n_train:,} features" in _row(plan, "train", "data")
    assert f"{n_eval_ex:,} examples -> {n_eval:,} features" in _row(plan, "eval", "data")

    global_batch = 8 * 2 * 2
    per_epoch = n_train // global_batch
    assert _row(plan, "global batch").startswith(f"{global_batch} = 8 per device x 2 process(es) x 2")
    assert _row(plan, "steps per epoch").startswith(f"{per_epoch:,} ")
    assert _row(plan, "optimizer steps").startswith(f"{3 * per_epoch:,} over 3 epoch(s)")
    saves = ", ".join(str(s) for s in range(10, 3 * per_epoch + 1, 10))
    assert per_epoch * 3 < 70  # so the plan lists every step rather than eliding some
    assert _row(plan, "checkpoints", "schedule") == f"every 10 steps (steps {saves}); newest 3 kept"
    epoch_ends = ", ".join(f"{k * per_epoch}" for k in (1, 2))
    assert f"at the end of each epoch but the last (steps {epoch_ends})" in _row(plan, "evaluation")

    # Memory: ZeRO-2 in fp32 (CPU) on N=2, Ψ counted from the real weights.
    psi = sum(p.numel() for p in AutoModelForQuestionAnswering.from_pretrained(tiny).parameters())
    assert _row(plan, "parameters", "model") == f"{psi:,} (Ψ)"
    mem = plan.split("\nmemory per process", 1)[1]
    assert _row(mem, "formula") == "4Ψ (fp32 params) + 4Ψ/N (fp32 grads) + 8Ψ/N (Adam m, v) = 4Ψ + 12Ψ/N"
    assert _row(mem, "parameters") == format_bytes(4 * psi)
    assert _row(mem, "gradients") == format_bytes(4 * psi / 2)
    assert _row(mem, "optimizer states") == format_bytes(8 * psi / 2)
    assert _row(mem, "total") == format_bytes(4 * psi + 12 * psi / 2)
    assert "activations" in _row(mem, "not included")

    assert _row(plan, "S3") == "s3://bucket/prefix/exp1/checkpoints/step_NNNNNNN/, s3://bucket/prefix/exp1/final/"
    assert _row(plan, "W&B").startswith("off")


def test_plan_without_the_dataset_or_model_config_says_unknown(tiny: Path) -> None:
    # Hub names that are not cached (the test session is offline): the plan still prints.
    cfg = load_and_check(["--dataset_name", "squad_v2", "--version_2_with_negative", "true",
                       "--tokenizer_name", str(tiny), "--model_name_or_path", "no-such-org/no-such-model",
                       "--mixed_precision", "'no'", "--deepspeed", ZERO2], check_files=False)
    plan = describe_plan(cfg, world_size=8, cuda=False)
    assert _row(plan, "train", "data").startswith("squad_v2 train: unknown (needs the dataset")
    assert _row(plan, "eval", "data").startswith("squad_v2 validation: unknown (needs the dataset")
    assert _row(plan, "optimizer steps").startswith("unknown (needs the dataset)")
    assert _row(plan, "parameters", "model").startswith("unknown (needs the model config")
    assert _row(plan, "formula") == "4Ψ (fp32 params) + 4Ψ/N (fp32 grads) + 8Ψ/N (Adam m, v) = 4Ψ + 12Ψ/N"
    assert _row(plan, "total", "memory") == "unknown (needs the model config for Ψ)"
    # Local data but a tokenizer that is not cached: examples are counted, features are not.
    cfg = _cfg(tiny, "--tokenizer_name", "no-such-org/no-such-tokenizer", "--do_eval", "false")
    train = _row(describe_plan(cfg, world_size=1, cuda=False), "train", "data")
    assert re.fullmatch(r".*train.json: 307 examples -> features unknown \(needs the tokenizer; \w+\)", train)


def test_schedule_follows_the_training_loop() -> None:
    # 100 features, 8 per device x 2 processes x 2 accumulation = 32 per step: 3 whole steps per epoch.
    cfg = make_config(per_device_train_batch_size=8, gradient_accumulation_steps=2, num_train_epochs=2.5)
    sched = training_schedule(cfg, 100, 2)
    assert (sched.steps_per_epoch, sched.total_steps, sched.epochs) == (3, 8, 3)
    assert sched.epoch_ends() == [3, 6]  # the third epoch stops at step 8, inside it
    full = Schedule(global_batch=32, steps_per_epoch=3, total_steps=9, epochs=3)
    assert full.epoch_ends() == [3, 6, 9]  # an epoch checkpoint after the last epoch too
    assert full.epoch_evaluations() == [3, 6]  # the final evaluation replaces the last epoch's
    capped = training_schedule(make_config(per_device_train_batch_size=8, max_train_steps=7), 100, 2)
    assert (capped.steps_per_epoch, capped.total_steps, capped.epochs) == (6, 7, 2)


def test_wandb_destination_and_mode(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(tiny, "--report_to", "wandb", "--wandb_project", "proj", "--wandb_entity", "team",
               "--wandb_group", "sweep", "--run_name", "r1", "--do_train", "false")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    line = _row(describe_plan(cfg, world_size=1, cuda=False), "W&B")
    assert line.startswith("project proj, entity team, group sweep, run r1; offline")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert "; online" in _row(describe_plan(cfg, world_size=1, cuda=False), "W&B")


def test_only_rank_zero_plans(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    assert describe_plan(_cfg(tiny), world_size=2, cuda=False) == ""


@pytest.mark.parametrize("stage, n, gpu_coef", [
    (0, 8, 16), (1, 8, 4 + 12 / 8), (2, 8, 2 + 14 / 8), (3, 8, 16 / 8), (2, 1, 16), (3, 64, 16 / 64),
])
def test_zero_memory_formula_mixed_precision(stage: int, n: int, gpu_coef: float) -> None:
    psi = 1_000_003
    est = estimate_memory(psi, stage=stage, world_size=n, mixed_precision_states=True)
    assert math.isclose(est.gpu_total, gpu_coef * psi)
    assert est.host == 0


def test_zero_memory_formula_fp32_and_offload() -> None:
    psi = 1000
    assert estimate_memory(psi, stage=0, world_size=4, mixed_precision_states=False).gpu_total == 16 * psi
    z2 = estimate_memory(psi, stage=2, world_size=4, mixed_precision_states=False)
    assert z2.gpu_total == 4 * psi + 12 * psi / 4
    off = estimate_memory(psi, stage=3, world_size=4, mixed_precision_states=True, offload_optimizer=True,
                          offload_params=True)
    assert off.gpu_total == 2 * psi / 4 and off.host == 14 * psi / 4  # only the gradient shard stays
    assert off.formula == ("2Ψ/N (16-bit grads); offloaded per rank: 2Ψ/N (16-bit params) + "
                           "12Ψ/N (fp32 master + Adam m, v)")
    # offload_param means nothing below ZeRO-3
    z2 = estimate_memory(psi, stage=2, world_size=4, mixed_precision_states=True, offload_optimizer=True,
                         offload_params=True)
    assert z2.params_gpu == 2 * psi and z2.optimizer_gpu == 0 and z2.host == 12 * psi / 4


# ----------------------------------------------------------------------------------------------------------
# Inconsistent launches: each refused, the message naming what to change
# ----------------------------------------------------------------------------------------------------------


def _json(tmp_path: Path, base: str, **changes) -> str:
    cfg = json.loads(Path(base).read_text())
    for dotted, value in changes.items():
        node = cfg
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def test_fp16_on_cpu_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"mixed_precision: fp16 needs a CUDA GPU; use bf16 or no"):
        check_plan(_cfg(None, "--mixed_precision", "fp16"), 1, cuda=False)
    check_plan(_cfg(None, "--mixed_precision", "fp16"), 1, cuda=True)


def test_zero3_export_needs_gathered_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_gather = _json(tmp_path, ZERO3, zero_optimization__stage3_gather_16bit_weights_on_model_save=False)
    with pytest.raises(ConfigError, match=r"stage3_gather_16bit_weights_on_model_save false, but the final "
                                          r"export .* set it to true"):
        check_plan(_cfg(None, "--deepspeed", no_gather), 2, cuda=False)
    with pytest.raises(ConfigError, match=r"export_every_checkpoint needs"):
        check_plan(_cfg(None, "--deepspeed", no_gather, "--do_train", "false",
                        "--export_every_checkpoint", "true"), 2, cuda=False)
    check_plan(_cfg(None, "--deepspeed", no_gather, "--do_train", "false"), 2, cuda=False)  # eval only: fine
    auto = _json(tmp_path, ZERO3, zero_optimization__stage3_gather_16bit_weights_on_model_save="auto")
    with pytest.raises(ConfigError, match="stage3_gather_16bit_weights_on_model_save"):
        check_plan(_cfg(None, "--deepspeed", auto), 2, cuda=False)
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL", "true")  # accelerate config's choice
    check_plan(_cfg(None, "--deepspeed", auto), 2, cuda=False)


@pytest.mark.parametrize("flag, message", [
    ("--resume_weights_only", r"resume_weights_only: under ZeRO-3 .* \(resume_weights_only: false\)"),
    ("--torch_compile", r"torch_compile: .* set torch_compile: false or use ZeRO-2"),
])
def test_zero3_refuses_weights_only_resume_and_compile(flag: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_plan(_cfg(None, "--deepspeed", ZERO3, flag, "true"), 2, cuda=False)
    check_plan(_cfg(None, "--deepspeed", ZERO2, flag, "true"), 2, cuda=False)  # fine under ZeRO-2


@pytest.mark.parametrize("world, extra, message", [
    (4, ["--total_train_batch_size", "64"], r"8 x 4 process\(es\) x gradient_accumulation_steps 1 = 32; on 4 "
                                            r"process\(es\) set --gradient_accumulation_steps 2 or "
                                            r"--per_device_train_batch_size 16"),
    (8, ["--total_train_batch_size", "32"], r"set --per_device_train_batch_size 4$"),
    (3, ["--total_train_batch_size", "64"], r"a world size of 3 cannot make 64 .* launch a number of "
                                            r"processes that divides 64; .*8 processes would make it"),
])
def test_total_batch_mismatch_says_which_setting_makes_it(world: int, extra: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=r"total_train_batch_size: .*" + message):
        check_plan(_cfg(None, *extra), world, cuda=False)


def test_total_batch_that_matches_passes() -> None:
    check_plan(_cfg(None, "--total_train_batch_size", "32"), 4, cuda=False)
    check_plan(_cfg(None, "--total_train_batch_size", "32", "--gradient_accumulation_steps", "2"), 2,
               cuda=False)


@pytest.mark.parametrize("changes, message", [
    ({"train_micro_batch_size_per_gpu": 4}, r"train_micro_batch_size_per_gpu=4 but the run config implies 8; "
                                            r"set it to \"auto\""),
    ({"gradient_clipping": 0.5}, r"gradient_clipping=0.5 but the run config implies 1.0"),
    ({"gradient_accumulation_steps": 4}, r"gradient_accumulation_steps=4"),
    ({"fp16__enabled": True}, r"fp16.enabled=True but mixed_precision resolves to 'no'"),
    ({"optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
      "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_num_steps": 5}}},
     r"optimizer.params.lr=0.001 but learning_rate is 3e-05; set it to \"auto\""),
    ({"optimizer": {"type": "AdamW", "params": {"lr": "auto"}}},
     r"\"optimizer\" section but no \"scheduler\" section.*remove the optimizer section"),
    ({"scheduler": {"type": "WarmupCosineLR", "params": {}}},
     r"lr_scheduler_type: linear, but .* WarmupCosineLR .* set lr_scheduler_type: cosine"),
    ({"scheduler": {"type": "WarmupDecayLR", "params": {"warmup_num_steps": "auto"}}},
     r"num_warmup_steps: DeepSpeed's WarmupDecayLR .* needs warmup_num_steps >= 1, got 0"),
    ({"zero_optimization": None}, r"no \"zero_optimization\" section"),
])
def test_deepspeed_json_values_that_disagree(tmp_path: Path, changes: dict, message: str) -> None:
    path = _json(tmp_path, ZERO2, **changes)
    with pytest.raises(ConfigError, match=message):
        check_plan(_cfg(None, "--deepspeed", path), 2, cuda=False)


def test_launcher_deepspeed_settings_must_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the launcher's paths are relative to where it ran
    cfg = _cfg(None)  # deepspeed: zero2.json
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", "configs/deepspeed/zero3.json")
    with pytest.raises(ConfigError, match=r"accelerate config points at configs/deepspeed/zero3.json .* pass "
                                          r"--deepspeed configs/deepspeed/zero3.json, or launch with "
                                          r"--deepspeed_config_file .*zero2.json"):
        check_plan(cfg, 2, cuda=False)
    # the same file, given relative to the launcher's directory
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", "configs/deepspeed/zero2.json")
    check_plan(cfg, 2, cuda=False)
    monkeypatch.setenv("ACCELERATE_CONFIG_DS_FIELDS", "deepspeed_config_file,zero3_init_flag,mixed_precision")
    with pytest.raises(ConfigError, match=r"sets \['mixed_precision'\].* remove them from the accelerate"):
        check_plan(cfg, 2, cuda=False)
    monkeypatch.delenv("ACCELERATE_CONFIG_DS_FIELDS")
    with pytest.raises(ConfigError, match=r"launcher turned DeepSpeed on .* deepspeed: null,.* --deepspeed"):
        check_plan(_cfg(None, "--deepspeed", "null"), 2, cuda=False)


def test_too_little_data_for_one_step_is_refused(tiny: Path) -> None:
    cfg = _cfg(tiny, "--max_train_samples", "4", "--do_eval", "false")
    with pytest.raises(ConfigError, match=r"cannot fill one optimizer step .* lower the batch size"):
        describe_plan(cfg, world_size=2, cuda=False)


# ----------------------------------------------------------------------------------------------------------
# Through train.py
# ----------------------------------------------------------------------------------------------------------


def test_train_py_dry_run_prints_the_plan_and_writes_nothing(tiny: Path, tmp_path: Path,
                                                             train_main: Callable[[list[str]], int],
                                                             capfd: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    monkeypatch.chdir(REPO)
    rc = train_main(["--config", str(REPO / "configs" / "demo_cpu.yaml"), "--model_name_or_path", str(tiny),
                     "--output_dir", str(out), "--mixed_precision", "'no'", "--report_to", "none", "--dry_run"])
    proc = subprocess.CompletedProcess([], rc, *capfd.readouterr())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Dry run for run 'demo'") == 1
    assert "steps per epoch" in proc.stdout and "memory per process" in proc.stdout
    assert not out.exists()  # neither output_dir/final nor anything else


def test_launched_dry_run_prints_once(tiny: Path, tmp_path: Path) -> None:
    proc = launch(["--config", str(REPO / "configs" / "demo_cpu.yaml"), "--model_name_or_path", str(tiny),
                   "--output_dir", str(tmp_path / "out"), "--mixed_precision", "'no'", "--report_to", "none",
                   "--dry_run"], tmp=tmp_path, nproc=2, timeout=300)
    assert proc.stdout.count("Dry run for run") == 1
    assert re.search(r"world size +2 process\(es\) \(WORLD_SIZE\)", proc.stdout)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("native", [False, True])
def test_dry_run_says_which_precision_and_why(tiny: Path, native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 on a CPU without a bf16 unit: the dry run shows the same one-line warning train.py logs; auto is fp32
    there. The CPU's flags are set (no machine here has both kinds of CPU); everything else is real."""
    import qa.distributed.precision as precision

    caps = {"cpu_name": "AMD EPYC", "simd": "AVX512" if native else "AVX2", "avx512_bf16": native}
    monkeypatch.setattr(precision, "cpu_capabilities", lambda: caps)
    bf16 = describe_plan(_cfg(tiny, "--mixed_precision", "bf16"), world_size=2, cuda=False)
    warned = [w for w in check_plan(_cfg(None, "--mixed_precision", "bf16"), 2, cuda=False) if "bf16" in w]
    assert bool(warned) is not native
    assert _row(bf16, "precision").startswith("bf16 mixed precision (mixed_precision bf16")
    if not native:
        (line,) = warned
        assert f"  - {line}" in bf16.split("\nwarnings", 1)[1]  # the train-time line, word for word
        assert "mixed_precision: auto" in line and "AMD EPYC, AVX2" in line
    auto = describe_plan(_cfg(tiny, "--mixed_precision", "auto"), world_size=2, cuda=False)
    assert _row(auto, "precision") == (
        ("bf16 mixed precision (mixed_precision auto: this CPU (AMD EPYC, AVX512) computes bf16 natively"
         if native else "fp32 (mixed_precision auto: this CPU (AMD EPYC, AVX2) has no native bf16 (AVX512-BF16 or "
         "AMX); emulated bf16 is slower than fp32") + "; fp16 when launched on GPUs)")


def test_checkpoint_disk_row_compares_kept_checkpoints_with_free_space(tiny: Path, tmp_path: Path) -> None:
    from small_fs import small_filesystem

    from qa.checkpoint.disk import estimate_checkpoint_bytes
    from qa.preflight.memory import count_parameters

    with small_filesystem(tmp_path / "disk", 30) as disk:
        cfg = _cfg(tiny, "--output_dir", str(disk / "out"), "--save_total_limit", "3", "--deepspeed", "null")
        plan = describe_plan(cfg, world_size=1, cuda=False)
        one = estimate_checkpoint_bytes(count_parameters(cfg)[0], deepspeed=False, mixed_precision=False,
                                        export=False)
        row = _row(plan, "checkpoint disk")
        assert row.startswith(f"~{format_bytes(one)} each x 4 (save_total_limit + 1 while saving) = "
                              f"{format_bytes(4 * one)}; ")
        assert row.endswith(f" free in {disk / 'out' / 'checkpoints'}")
        assert one * 4 > 30 * 2**20  # so the plan must warn
        assert f"checkpoints need about {format_bytes(4 * one)} in {disk / 'out' / 'checkpoints'}, only " in plan
        plan = describe_plan(_cfg(tiny, "--output_dir", str(disk / "out"), "--save_total_limit", "1",
                                  "--deepspeed", "null"), world_size=1, cuda=False)
        assert "checkpoints need about" not in plan  # 2 x ~12 MB fit in 30 MiB


def test_epoch_checkpoints_of_a_run_shorter_than_an_epoch_say_it_saves_at_the_end(tiny: Path) -> None:
    row = _row(describe_plan(_cfg(tiny, "--checkpointing_steps", "epoch", "--max_train_steps", "2"), world_size=1,
                             cuda=False), "checkpoints")
    assert row.startswith("at the end of each epoch (steps none); max_train_steps ends the run at step 2 (shorter "
                          "than one epoch), inside an epoch of ")
    assert ": saved there too" in row
