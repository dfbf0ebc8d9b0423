"""Tokenizer and model from a path or Hub id (the user's checkpoint)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, PreTrainedTokenizerBase

from qa.errors import ConfigError
from qa.model.settings import ModelSettings

logger = logging.getLogger(__name__)


def load_tokenizer(settings: ModelSettings) -> PreTrainedTokenizerBase:
    tok = AutoTokenizer.from_pretrained(settings.tokenizer_source, use_fast=True)
    if getattr(tok, "padding_side", "right") != "right":
        # Labels and offsets index the unpadded window; left padding would shift every one of them.
        raise ConfigError(f"tokenizer_name: {settings.tokenizer_source} pads on the left "
                          "(context-first models); only right-padding tokenizers are supported")
    if not getattr(tok, "is_fast", False):
        raise ConfigError(f"tokenizer_name: {settings.tokenizer_source} has no fast tokenizer; "
                          "offsets for answer spans need one")
    return tok


# Config attributes that hold dropout probabilities (BERT/MiniLM/RoBERTa/ELECTRA; DistilBERT). On CPU, dropout is
# about a fifth of a MiniLM training step (torch draws the masks one element at a time, and attention dropout sends
# SDPA to its unfused math path); a short fine-tune learns as well without it.
DROPOUT_ATTRIBUTES = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
                      "qa_dropout")


def load_model(settings: ModelSettings) -> torch.nn.Module:
    kwargs: dict[str, Any] = {}
    if settings.attn_implementation:
        kwargs["attn_implementation"] = settings.attn_implementation
    if settings.dropout is not None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(settings.model_name_or_path)
        found = [name for name in DROPOUT_ATTRIBUTES if isinstance(getattr(config, name, None), float)]
        if not found:
            raise ConfigError(f"dropout: {settings.model_name_or_path} ({config.model_type}) has none of the "
                              f"dropout settings {', '.join(DROPOUT_ATTRIBUTES)}; set dropout: null")
        for name in found:
            setattr(config, name, settings.dropout)
        kwargs["config"] = config
    try:
        return AutoModelForQuestionAnswering.from_pretrained(settings.model_name_or_path, **kwargs)
    except (ValueError, ImportError) as e:
        # Some architectures have no SDPA path; fall back to their default attention rather than fail.
        if "attn_implementation" in kwargs and "attn" in str(e).lower():
            logger.warning("%s: %s; using the default attention", settings.model_name_or_path, e)
            kwargs.pop("attn_implementation")
            return AutoModelForQuestionAnswering.from_pretrained(settings.model_name_or_path, **kwargs)
        raise
