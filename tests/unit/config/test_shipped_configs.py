"""Every shipped config loads and agrees with the others: run YAMLs, accelerate YAMLs, DeepSpeed JSONs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from configs import ds_sections
from fixtures import REPO, launch, make_tiny_model
from qa.config import Config, make_config
from qa.distributed.accelerator import load_deepspeed_config, zero_stage
from qa.errors import ConfigError
from qa.preflight.checks import _ACCELERATE_FIELDS_REFUSED_WITH_JSON, _check_ds_values, check_plan
from qa.preflight.config_checks import load_and_check
from qa.preflight.launch import accelerate_config_for

CONFIGS = REPO / "configs"
RUN_YAMLS = sorted(CONFIGS.glob("*.yaml"))
ACCELERATE_YAMLS = sorted((CONFIGS / "accelerate").glob("*.yaml"))
DS_JSONS = sorted((CONFIGS / "deepspeed").glob("*.json"))
OWNED_BY_RUN_CONFIG = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                       "gradient_clipping")




def _id(p: Path) -> str:
    return str(p.relative_to(CONFIGS))


def test_there_is_something_to_check() -> None:
    names = {p.name for p in RUN_YAMLS}
    assert {"squad_v1_distilbert.yaml", "squad_v2_distilbert.yaml", "squad_v1_bert_large_zero3.yaml"} <= names
    assert {p.name for p in ACCELERATE_YAMLS} >= {"1gpu.yaml", "8gpu_zero2_fp16.yaml", "8gpu_zero3_fp16.yaml",
                                                   "zero3_offload.yaml", "multinode.yaml"}
    assert {p.name for p in DS_JSONS} >= {"zero2.json", "zero3.json", "zero3_offload.json"}


def _load_run(path: Path) -> Config:
    return load_and_check(["--config", str(path)], check_files=False)


def _intended_launch(cfg: Config, path: Path) -> tuple[int, bool]:
    """(world size, cuda) the file is written for: its total_train_batch_size says how many processes."""
    cuda = "cpu" not in path.name
    if cfg.batch.total_train_batch_size is None:
        return (2 if not cuda else 1), cuda
    per_process = cfg.batch.per_device_train_batch_size * cfg.batch.gradient_accumulation_steps
    return cfg.batch.total_train_batch_size // per_process, cuda


@pytest.mark.parametrize("path", RUN_YAMLS, ids=_id)
def test_run_yaml_loads_and_its_plan_is_consistent(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    for key in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_CONFIG_FILE",
                "ACCELERATE_CONFIG_DS_FIELDS"):
        monkeypatch.delenv(key, raising=False)
    cfg = _load_run(path)
    for key in ("train_file", "validation_file", "deepspeed"):
        value = getattr(cfg.distributed if key == "deepspeed" else cfg.data, key)
        assert value is None or (REPO / value).is_file(), f"{path.name}: {key} {value} does not exist"
    world, cuda = _intended_launch(cfg, path)
    assert world >= 1
    check_plan(cfg, world, cuda)  # batch, precision, DeepSpeed values, ZeRO-3 rules


@pytest.mark.parametrize("path", [p for p in RUN_YAMLS if p.name.startswith("squad_")], ids=_id)
def test_squad_recipes(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    cfg = _load_run(path)
    v2 = "v2" in path.name
    assert cfg.data.dataset_name == ("squad_v2" if v2 else "squad") and cfg.data.version_2_with_negative is v2
    assert (cfg.data.max_seq_length, cfg.data.doc_stride) == (384, 128)
    assert cfg.distributed.mixed_precision == "auto" and cfg.checkpoint.resume_from_checkpoint == "auto"
    assert cfg.batch.total_train_batch_size is not None  # the recipe's global batch is pinned
    assert cfg.distributed.deepspeed is not None
    if "zero3" in path.name:
        assert zero_stage(json.loads(Path(cfg.distributed.deepspeed).read_text())) == 3
    # The accelerate YAML the launch scripts pick for 8 GPUs names the same JSON, so using it directly agrees.
    acc = yaml.safe_load(Path(accelerate_config_for(cfg, 8, True)).read_text())
    assert acc["deepspeed_config"]["deepspeed_config_file"] == cfg.distributed.deepspeed


@pytest.mark.parametrize("path", ACCELERATE_YAMLS, ids=_id)
def test_accelerate_yaml(path: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    parsed = load_config_from_file(str(path))  # accelerate's own loader: unknown keys fail here
    raw = yaml.safe_load(path.read_text())
    assert raw["distributed_type"] == "DEEPSPEED" and not raw["use_cpu"]
    ds = raw["deepspeed_config"]
    json_path = REPO / ds["deepspeed_config_file"]
    assert json_path.is_file()
    # Next to a JSON, Accelerate refuses these at start-up (see test_accelerate_refuses_mixed_precision_...).
    assert "mixed_precision" not in raw and parsed.mixed_precision is None
    assert not set(ds) & _ACCELERATE_FIELDS_REFUSED_WITH_JSON
    stage = zero_stage(json.loads(json_path.read_text()))
    assert ds.get("zero3_init_flag", False) == (stage == 3)
    if path.name == "multinode.yaml":
        assert raw["rdzv_backend"] == "c10d" and ds["deepspeed_multinode_launcher"] == "standard"
        assert "main_process_ip" not in raw  # must come from the launcher
        assert raw["num_machines"] > 1
    else:
        assert raw["num_machines"] == 1
        assert raw["num_processes"] == (1 if path.name == "1gpu.yaml" else 8)


def test_accelerate_refuses_mixed_precision_next_to_a_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """Why the accelerate YAMLs carry no mixed_precision: with it, every rank fails building the plugin."""
    from accelerate.utils import DeepSpeedPlugin

    ds = json.loads((CONFIGS / "deepspeed" / "zero2.json").read_text())
    monkeypatch.setenv("ACCELERATE_CONFIG_DS_FIELDS", "deepspeed_config_file,zero3_init_flag,mixed_precision")
    with pytest.raises(ValueError, match="deepspeed_config_file"):
        DeepSpeedPlugin(hf_ds_config=ds)
    monkeypatch.setenv("ACCELERATE_CONFIG_DS_FIELDS", "deepspeed_config_file,zero3_init_flag")
    DeepSpeedPlugin(hf_ds_config=ds)


@pytest.mark.parametrize("path", DS_JSONS, ids=_id)
@pytest.mark.parametrize("precision", ["fp16", "no"])
def test_deepspeed_json_leaves_run_values_to_the_run_config(path: Path, precision: str) -> None:
    raw = json.loads(path.read_text())
    for key in OWNED_BY_RUN_CONFIG:
        assert raw[key] == "auto", f"{path.name}: {key} must be \"auto\""
    for section in ("fp16", "bf16"):
        assert raw[section]["enabled"] == "auto"
    for section in ("optimizer", "scheduler"):
        for key, value in raw.get(section, {}).get("params", {}).items():
            assert value == "auto", f"{path.name}: {section}.params.{key}"
    cfg = make_config(deepspeed=str(path), per_device_train_batch_size=6, gradient_accumulation_steps=2,
                      max_grad_norm=0.7, mixed_precision=precision)
    filled = load_deepspeed_config(*ds_sections(cfg), world_size=8, precision=precision)
    assert filled["train_micro_batch_size_per_gpu"] == 6 and filled["train_batch_size"] == 96
    assert filled["gradient_clipping"] == 0.7 and filled["fp16"]["enabled"] is (precision == "fp16")
    check_plan(cfg, 8, cuda=precision == "fp16")  # also: an optimizer section needs a scheduler section


@pytest.mark.parametrize("path", [p for p in DS_JSONS if p.name.startswith("zero3")], ids=_id)
def test_zero3_jsons_can_export(path: Path) -> None:
    z = json.loads(path.read_text())["zero_optimization"]
    assert z["stage"] == 3 and z["stage3_gather_16bit_weights_on_model_save"] is True


def test_offload_json() -> None:
    raw = json.loads((CONFIGS / "deepspeed" / "zero3_offload.json").read_text())
    z = raw["zero_optimization"]
    for key in ("offload_optimizer", "offload_param"):
        assert z[key] == {"device": "cpu", "pin_memory": True}
    # No optimizer section: qa.modeling would build DummyOptim, which our LR schedule cannot wrap (it fails in
    # build_scheduler); Accelerate maps our AdamW to DeepSpeed's CPU Adam by itself.
    assert "optimizer" not in raw and "scheduler" not in raw
    assert raw.get("zero_force_ds_cpu_optimizer", True) is True
    with_optimizer = {**raw, "optimizer": {"type": "AdamW", "params": {"lr": "auto"}}}
    with pytest.raises(ConfigError, match="no \"scheduler\" section"):
        _check_ds_values(make_config(), with_optimizer, "x")


@pytest.mark.slow
def test_offload_json_trains_with_deepspeed_cpu_adam(tmp_path: Path) -> None:
    """Two real optimizer steps under zero3_offload.json (DeepSpeed's CPU Adam, built on first use)."""
    tiny = make_tiny_model(tmp_path / "tiny")
    out = tmp_path / "out"
    proc = launch(["--config", str(CONFIGS / "demo_cpu.yaml"), "--model_name_or_path", str(tiny),
                   "--deepspeed", str(CONFIGS / "deepspeed" / "zero3_offload.json"),
                   "--mixed_precision", "'no'", "--max_train_steps", "2", "--do_eval", "false",
                   "--report_to", "none", "--output_dir", str(out)],
                  tmp=tmp_path, nproc=2, timeout=900)
    assert "outcome=completed" in proc.stdout
    assert (out / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize("path", RUN_YAMLS, ids=_id)
def test_precision_is_left_to_the_machine(path: Path) -> None:
    """bf16 is 6x slower than fp32 on a CPU without a bf16 unit, fp16 fails on CPU: every shipped run config says
    auto (bf16 where the CPU has the unit, fp32 elsewhere, fp16 on GPUs)."""
    assert yaml.safe_load(path.read_text())["mixed_precision"] == "auto"
