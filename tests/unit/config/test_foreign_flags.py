"""Flags of HF's run_qa scripts: every unknown key in one refusal, each foreign flag with what to do instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from configs import from_mapping as from_dict
from qa.config.foreign_flags import FOREIGN_FLAGS
from qa.config.sections import KEY_SECTION
from qa.errors import ConfigError
from qa.preflight.config_checks import load_and_check

DATA = ["--train_file", "t.json", "--validation_file", "v.json"]


def _refusal(argv: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_and_check([*DATA, *argv], check_files=False)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_no_foreign_flag_is_a_key_of_ours() -> None:
    # A flag in the table that is also a schema key would be refused while it works.
    assert not set(FOREIGN_FLAGS) & set(KEY_SECTION)


def test_every_unknown_key_of_a_run_qa_command_line_is_named_in_one_refusal() -> None:
    message = _refusal(["--pad_to_max_length", "--push_to_hub", "--hub_model_id", "me/squad", "--hub_token",
                        "hf_x", "--lerning_rate", "1e-5", "--fp16"])
    assert message.startswith("command line: 6 unknown keys: ")
    for key in ("pad_to_max_length", "push_to_hub", "hub_model_id", "hub_token", "lerning_rate", "fp16"):
        assert repr(key) in message
    assert "unexpected argument" not in message  # me/squad and hf_x are the values of the flags before them
    assert "did you mean 'learning_rate'?" in message
    assert "--mixed_precision" in message  # fp16's answer


def test_pad_to_max_length_says_what_padding_is_not_a_misleading_guess() -> None:
    message = _refusal(["--pad_to_max_length"])
    assert "max_seq_length'?" not in message  # the old difflib guess: "did you mean 'max_seq_length'?"
    assert "padded to their longest window" in message and "per_device_train_batch_size" in message


@pytest.mark.parametrize("flag", ["--push_to_hub", "--hub_model_id=me/squad", "--hub_token=hf_x"])
def test_hub_flags_say_how_to_upload_final(flag: str) -> None:
    message = _refusal([flag])
    assert "final/" in message and "huggingface-cli upload" in message


def test_yaml_and_command_line_unknown_keys_come_together(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("pad_to_max_length: true\nlerning_rate: 1e-5\nlearning_rate: 1e-5\n")
    with pytest.raises(ConfigError) as info:
        load_and_check(["--config", str(cfg), *DATA, "--push_to_hub"], check_files=False)
    message = str(info.value)
    assert message.startswith(f"{cfg} and command line: 3 unknown keys: ")
    assert all(k in message for k in ("'pad_to_max_length'", "'lerning_rate'", "'push_to_hub'"))
    with pytest.raises(ConfigError, match=r"^config: 2 unknown keys: 'use_slow_tokenizer': .*fast tokenizer.* \| "
                                          r"unknown key 'zzz'"):
        from_dict({"use_slow_tokenizer": True, "zzz": 1, "train_file": "t.json"}, check_files=False)
