"""max_seq_length must fit the model's positions (minus RoBERTa's padding offset) and the tokenizer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer, BertConfig, DebertaV2Config, DistilBertConfig, RobertaConfig

from fixtures import REPO, base_env, make_tiny_model, minilm_dir
from qa.config import make_config
from qa.errors import ConfigError
from qa.preflight.limits import check_max_seq_length, position_limit, tokenizer_limit


def test_position_limits_by_family() -> None:
    assert position_limit(BertConfig(max_position_embeddings=512))[0] == 512
    assert position_limit(DistilBertConfig(max_position_embeddings=128))[0] == 128
    # RoBERTa: positions start at pad_token_id + 1, so 514 rows hold 512 positions.
    limit, why = position_limit(RobertaConfig(max_position_embeddings=514, pad_token_id=1))
    assert limit == 512 and "padding offset 2" in why
    # Relative positions only: no table to run off.
    assert position_limit(DebertaV2Config(position_biased_input=False)) is None


def test_tokenizer_limit_ignores_the_unset_sentinel() -> None:
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    tok.model_max_length = 256
    assert tokenizer_limit(tok) == 256
    tok.model_max_length = int(1e30)  # transformers' "not recorded"
    assert tokenizer_limit(tok) is None


def test_too_long_windows_are_refused_naming_the_key_and_the_limit() -> None:
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    tok.model_max_length = 10**30
    roberta = RobertaConfig(max_position_embeddings=130, pad_token_id=1)
    with pytest.raises(ConfigError, match=r"^max_seq_length: 256 is more than m allows \(128: the model's "
                                          r"max_position_embeddings 130 minus the padding offset 2"):
        check_max_seq_length(make_config(model_name_or_path="m", max_seq_length=256), roberta, tok)
    check_max_seq_length(make_config(model_name_or_path="m", max_seq_length=128, doc_stride=32), roberta, tok)
    tok.model_max_length = 100
    with pytest.raises(ConfigError, match=r"^max_seq_length: 128 .* \(100: the tokenizer's model_max_length "
                                          r"100\); set --max_seq_length 100 or less"):
        check_max_seq_length(make_config(model_name_or_path="m", max_seq_length=128, doc_stride=32), roberta, tok)


@pytest.mark.parametrize("dry_run", [True, False])
def test_train_py_refuses_at_start_up_and_in_the_dry_run(tmp_path: Path, dry_run: bool) -> None:
    from transformers import AutoModelForQuestionAnswering

    tiny = make_tiny_model(tmp_path / "tiny")
    short = tmp_path / "short"  # the same tiny model with 64 positions
    config = BertConfig.from_pretrained(tiny)
    config.max_position_embeddings = 64
    AutoModelForQuestionAnswering.from_config(config).save_pretrained(short)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(short)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "configs" / "demo_cpu.yaml"),
         "--model_name_or_path", str(short), "--output_dir", str(out), "--mixed_precision", "'no'",
         "--report_to", "none", "--max_seq_length", "128", "--doc_stride", "32",
         *(["--dry_run"] if dry_run else [])],
        cwd=REPO, env=base_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"config error: max_seq_length: 128 is more than {short} allows (64: the model's max_position_embeddings "
        "64); set --max_seq_length 64 or less")
    assert not out.exists()
