"""Tiny tokenizers of three families, trained offline on our own sentences, with tiny untrained QA models.

WordPiece (BERT: offsets cover words exactly), byte-level BPE (RoBERTa layout, no token_type_ids, offsets
left untrimmed so that "Ġword" covers " word", as GPT-2-style tokenizers give them) and Unigram with a
Metaspace pre-tokenizer (ALBERT / DeBERTa-v3 style: "▁word" covers " word", lone "▁" tokens).
"""

from __future__ import annotations

from typing import Any

SENTENCES = [
    "The old mill stands beside the river in Alder, where the water runs fast.",
    "It was built in 1820 by Mara Quill, a carpenter from the northern valley.",
    "Today the mill is a museum (open daily) and a cafe that sells bread and honey.",
    "Visitors cross the wooden bridge, then climb the hill to see the wheel turning.",
    "In 1911 a flood broke the dam; the village rebuilt it within two years.",
    "Quill's daughter, Ines, kept the accounts and wrote the first guide to the town.",
    "The museum holds tools, maps, letters and a model of the river as it was.",
    "Trains reach Alder twice a day from Brenn; the trip takes forty minutes.",
]


def wordpiece() -> Any:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(SENTENCES, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return _wrap(tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                 mask_token="[MASK]", model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def byte_level_bpe() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(SENTENCES, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")), trim_offsets=False,
        add_prefix_space=False)
    return _wrap(tok, bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>", unk_token="<unk>",
                 pad_token="<pad>", mask_token="<mask>", model_input_names=["input_ids", "attention_mask"])


def unigram_metaspace() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    specials = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(SENTENCES, trainers.UnigramTrainer(vocab_size=200, special_tokens=specials,
                                                               unk_token="<unk>"))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return _wrap(tok, unk_token="<unk>", pad_token="<pad>", cls_token="[CLS]", sep_token="[SEP]",
                 mask_token="[MASK]", model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def _wrap(tok: Any, **kwargs: Any) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512, **kwargs)


def tiny_model(family: str, tokenizer: Any, seed: int = 0) -> Any:
    """An untrained 2-layer QA model of the family's architecture, sized to the tokenizer."""
    import torch
    from transformers import AlbertConfig, AutoModelForQuestionAnswering, BertConfig, RobertaConfig

    common = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, pad_token_id=tokenizer.pad_token_id)
    if family == "wordpiece":
        config: Any = BertConfig(max_position_embeddings=512, **common)
    elif family == "bpe":
        # RoBERTa positions start after the padding index.
        config = RobertaConfig(max_position_embeddings=514, type_vocab_size=1, **common)
    else:
        config = AlbertConfig(embedding_size=16, max_position_embeddings=512, **common)
    torch.manual_seed(seed)
    return AutoModelForQuestionAnswering.from_config(config)


FAMILIES = {"wordpiece": wordpiece, "bpe": byte_level_bpe, "unigram": unigram_metaspace}
