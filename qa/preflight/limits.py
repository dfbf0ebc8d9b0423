"""How long a window the model and its tokenizer can take: ``max_seq_length`` above it is refused.

A window longer than the model's learned position embeddings indexes past the table (an index error on GPU,
minutes into the job, or silently wrapped positions on some kernels); a window longer than the tokenizer's
``model_max_length`` is what the model was never trained on. Hugging Face's ``run_qa_no_trainer.py`` clamps
``max_seq_length`` with a warning; we refuse at start-up and in the dry run, naming the limit, so the windows a
run reports are the windows it trains on.
"""

from __future__ import annotations

import logging
from typing import Any

from qa.config import Config
from qa.errors import ConfigError

logger = logging.getLogger(__name__)

# Models whose position ids start after the padding index (RoBERTa's create_position_ids_from_input_ids):
# position p of a window uses row pad_token_id + 1 + p, so pad_token_id + 1 rows of the table are not usable.
PADDING_OFFSET_MODEL_TYPES = frozenset({
    "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "ibert", "data2vec-text",
    "roberta-prelayernorm", "mpnet", "xmod", "luke", "markuplm",
})
# transformers marks "no limit recorded" with a huge model_max_length (VERY_LARGE_INTEGER = 1e30).
_NO_TOKENIZER_LIMIT = 10**9


def position_limit(model_config: Any) -> tuple[int, str] | None:
    """(longest window, why) from a model config; None when its positions are not a fixed table."""
    if getattr(model_config, "position_biased_input", True) is False:
        return None  # DeBERTa-v2/v3: relative positions only, no absolute table to run off
    n = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    if not isinstance(n, int) or n <= 0:
        return None
    if getattr(model_config, "model_type", None) in PADDING_OFFSET_MODEL_TYPES:
        pad = getattr(model_config, "pad_token_id", None)
        pad = 1 if pad is None else int(pad)
        return n - pad - 1, (f"max_position_embeddings {n} minus the padding offset {pad + 1} "
                             f"({model_config.model_type} positions start after pad_token_id {pad})")
    return n, f"max_position_embeddings {n}"


def tokenizer_limit(tokenizer: Any) -> int | None:
    n = getattr(tokenizer, "model_max_length", None)
    return n if isinstance(n, int) and 0 < n < _NO_TOKENIZER_LIMIT else None


def check_max_seq_length(cfg: Config, model_config: Any, tokenizer: Any) -> None:
    """Raise ConfigError naming max_seq_length and the limit when the windows would not fit."""
    limits: list[tuple[int, str]] = []
    pos = position_limit(model_config) if model_config is not None else None
    if pos is not None:
        limits.append((pos[0], f"the model's {pos[1]}"))
    tok = tokenizer_limit(tokenizer) if tokenizer is not None else None
    if tok is not None:
        limits.append((tok, f"the tokenizer's model_max_length {tok}"))
    if not limits:
        return
    limit, why = min(limits)
    if cfg.data.max_seq_length > limit:
        name = (cfg.model.tokenizer_name or cfg.model.model_name_or_path) if "tokenizer" in why else cfg.model.model_name_or_path
        raise ConfigError(f"max_seq_length: {cfg.data.max_seq_length} is more than {name} allows ({limit}: {why}); "
                          f"set --max_seq_length {limit} or less")


def check_sequence_length(cfg: Config) -> None:
    """Start-up and dry-run check; a model or tokenizer that cannot be read here is left to the real load."""
    from transformers import AutoConfig, AutoTokenizer

    model_config = tokenizer = None
    try:
        model_config = AutoConfig.from_pretrained(cfg.model.model_name_or_path)
    except Exception as e:  # noqa: BLE001 - offline hub names, typos: the model load reports them
        logger.debug("max_seq_length check: no model config for %s (%s)", cfg.model.model_name_or_path, e)
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer_name or cfg.model.model_name_or_path, use_fast=True)
    except Exception as e:  # noqa: BLE001 - likewise reported by the real load
        logger.debug("max_seq_length check: no tokenizer for %s (%s)", cfg.model.model_name_or_path, e)
    check_max_seq_length(cfg, model_config, tokenizer)
