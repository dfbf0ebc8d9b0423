"""Model and tokenizer sanity (qa.model.checks): each case a one-line ConfigError, found without loading weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fixtures import make_tiny_model
from qa.errors import ConfigError
from qa.model.checks import check_model
from qa.model.settings import ModelSettings


def _settings(model: Path | str, tokenizer: Path | str | None = None) -> ModelSettings:
    return ModelSettings(model_name_or_path=str(model), tokenizer_name=None if tokenizer is None else str(tokenizer),
                         attn_implementation=None, torch_compile=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    tiny = make_tiny_model(root / "tiny")
    no_tok = root / "no_tokenizer"  # what the user had: config + weights, tokenizer files left behind
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny / f, no_tok / f)
    wrong = root / "wrong_shapes"  # a config that does not describe the weights next to it
    shutil.copytree(tiny, wrong)
    cfg = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**cfg, "hidden_size": 64, "intermediate_size": 128}))
    other = root / "other_arch"  # distilbert weights under a bert config: names do not match at all
    make_tiny_model(root / "distil", arch="distilbert")
    shutil.copytree(root / "distil", other)
    shutil.copy(tiny / "config.json", other / "config.json")
    no_weights = root / "no_weights"
    no_weights.mkdir()
    shutil.copy(tiny / "config.json", no_weights / "config.json")
    ckpt = root / "step_0000004"  # a training checkpoint given as a model
    ckpt.mkdir()
    (ckpt / "COMPLETE").touch()
    broken = root / "broken"
    shutil.copytree(tiny, broken)
    (broken / "model.safetensors").write_bytes(b"\xff" * 16)
    return {"tiny": tiny, "no_tok": no_tok, "wrong": wrong, "other": other, "no_weights": no_weights,
            "ckpt": ckpt, "broken": broken, "root": root}


def _refusal(settings: ModelSettings) -> str:
    with pytest.raises(ConfigError) as info:
        check_model(settings)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_a_good_model_and_a_separately_named_tokenizer_pass(models: dict[str, Path]) -> None:
    check_model(_settings(models["tiny"]))
    check_model(_settings(models["no_tok"], tokenizer=models["tiny"]))  # tokenizer_name, as in HF's scripts


def test_a_model_folder_without_tokenizer_files_is_refused_naming_tokenizer_name(models: dict[str, Path]) -> None:
    message = _refusal(_settings(models["no_tok"]))
    assert message.startswith(f"model_name_or_path: {models['no_tok']} has no tokenizer files")
    assert "tokenizer_name" in message


def test_missing_path_and_offline_hub_id(models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refusal(_settings(models["root"] / "nope"))
    assert message == f"model_name_or_path: no such directory: {models['root'] / 'nope'} " \
                      f"(relative paths are read from {Path.cwd()})"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(models["root"] / "empty_hf_home"))  # nothing cached
    monkeypatch.setenv("HF_HUB_CACHE", str(models["root"] / "empty_hf_home" / "hub"))
    message = _refusal(_settings("distilbert-base-cased"))
    assert message.startswith("model_name_or_path: 'distilbert-base-cased' is not a local directory and could not "
                              "be fetched from the Hugging Face Hub")
    assert "local model directory" in message


def test_weights_that_do_not_fit_the_config_are_refused(models: dict[str, Path]) -> None:
    message = _refusal(_settings(models["wrong"]))
    assert "do not fit its config" in message and "is [30522, 32], the config makes it [30522, 64]" in message
    message = _refusal(_settings(models["other"]))
    assert "encoder tensors are missing" in message and "question-answering-compatible" in message
    assert "no weights" in _refusal(_settings(models["no_weights"]))
    assert "cannot be read" in _refusal(_settings(models["broken"]))
    message = _refusal(_settings(models["ckpt"]))
    assert "has no config.json" in message and "resume_from_checkpoint" in message


def test_tokenizer_must_fit_the_embedding(models: dict[str, Path]) -> None:
    from transformers import AutoConfig, AutoTokenizer

    from qa.model.checks import check_tokenizer_fits

    tok = AutoTokenizer.from_pretrained(models["tiny"])
    config = AutoConfig.from_pretrained(models["tiny"])
    config.vocab_size = 1000
    with pytest.raises(ConfigError, match=rf"has {len(tok)} tokens but the model's embedding has 1000 rows"):
        check_tokenizer_fits(tok, config, "tok")
    config.vocab_size = len(tok) * 4
    with pytest.raises(ConfigError, match=rf"has only {len(tok)} tokens for a model with {len(tok) * 4}"):
        check_tokenizer_fits(tok, config, "tok")
    config.vocab_size = len(tok)
    check_tokenizer_fits(tok, config, "tok")
    tok.pad_token = None
    with pytest.raises(ConfigError, match="has no pad_token; QA windows need"):
        check_tokenizer_fits(tok, config, "tok")
