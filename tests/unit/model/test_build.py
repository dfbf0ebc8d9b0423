"""Model-side helpers: parameter groups, DeepSpeed "auto" filling, tokenizer checks, FLOP accounting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from configs import ds_sections
from fixtures import DEMO_DATA, make_tiny_model
from qa.distributed.accelerator import load_deepspeed_config
from qa.errors import ConfigError
from qa.model.build import load_tokenizer
from qa.model.optim import param_groups
from qa.preflight.config_checks import load_and_check
from qa.trainer.perf import gpu_peak_tflops, model_shape, train_flops

REPO = Path(__file__).resolve().parents[3]




def _cfg(*extra: str):
    return load_and_check(["--train_file", str(DEMO_DATA / "train.json"), "--validation_file",
                        str(DEMO_DATA / "dev.json"), "--deepspeed", str(REPO / "configs/deepspeed/zero2.json"),
                        *extra])


def test_weight_decay_skips_biases_and_norms(tmp_path: Path) -> None:
    from transformers import AutoModelForQuestionAnswering

    model = AutoModelForQuestionAnswering.from_pretrained(make_tiny_model(tmp_path / "m"))
    decay, no_decay = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(not names[id(p)].endswith("bias") and "LayerNorm" not in names[id(p)] for p in decay["params"])
    assert any("LayerNorm" in names[id(p)] for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_deepspeed_auto_values_come_from_the_run_config() -> None:
    cfg = _cfg("--per_device_train_batch_size", "6", "--gradient_accumulation_steps", "3", "--max_grad_norm", "0.5")
    ds = load_deepspeed_config(*ds_sections(cfg), world_size=4, precision="bf16")
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (6, 3)
    assert ds["train_batch_size"] == 6 * 3 * 4 and ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False


def test_deepspeed_json_disagreeing_with_run_config_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text('{"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": 4}')
    cfg = _cfg("--deepspeed", str(path), "--per_device_train_batch_size", "8")
    with pytest.raises(ConfigError, match='train_micro_batch_size_per_gpu=4 .* set it to "auto"'):
        load_deepspeed_config(*ds_sections(cfg), world_size=1, precision="no")


def test_left_padding_tokenizer_is_refused(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    model_dir = make_tiny_model(tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    tok.save_pretrained(model_dir)
    with pytest.raises(ConfigError, match="pads on the left"):
        load_tokenizer(_cfg("--model_name_or_path", str(model_dir)).model)


def test_flops_and_peaks(tmp_path: Path) -> None:
    from transformers import AutoModelForQuestionAnswering

    model = AutoModelForQuestionAnswering.from_pretrained(make_tiny_model(tmp_path / "m"))
    n, layers, hidden = model_shape(model)
    assert (layers, hidden) == (2, 32) and 0 < n < sum(p.numel() for p in model.parameters())
    assert train_flops(np.array([10, 20]), 100, 2, 4) == 10 * (600 + 96 * 10) + 20 * (600 + 96 * 20)
    assert gpu_peak_tflops("NVIDIA H100 80GB HBM3", "fp16") == 989.4
    assert gpu_peak_tflops("NVIDIA H100 PCIe", "fp32") == 756.5 / 2
    assert gpu_peak_tflops("Some CPU", "fp16") is None


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_dropout_key_turns_the_encoders_dropout_off(tmp_path: Path, arch: str) -> None:
    """dropout: 0 reaches every dropout of the loaded model (two training-mode forwards agree); null keeps 0.1."""
    import torch

    from qa.model.build import load_model

    path = make_tiny_model(tmp_path / arch, arch=arch)
    ids = torch.tensor([[2, 5, 7, 9, 11, 3]])

    def two_forwards(dropout: str) -> tuple[torch.Tensor, torch.Tensor]:
        model = load_model(_cfg("--model_name_or_path", str(path), "--dropout", dropout).model).train()
        with torch.no_grad():
            return model(input_ids=ids).start_logits, model(input_ids=ids).start_logits

    a, b = two_forwards("0")
    assert torch.equal(a, b)
    a, b = two_forwards("null")
    assert not torch.equal(a, b)  # the fixture's 0.1 dropout, untouched


def test_dropout_out_of_range_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^dropout: must be in \[0, 1\) or null, got 1.0$"):
        _cfg("--dropout", "1")
