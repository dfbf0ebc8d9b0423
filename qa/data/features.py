"""Examples -> sliding-window features with exact token labels. Pure functions of (columns, tokenizer),
unit-tested directly and cached by ``datasets`` through its fingerprint.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import datasets

from qa.errors import DataError

logger = logging.getLogger(__name__)



# ---------------------------------------------------------------------------------------------
# Features (pure: a batch of columns in, columns out)
# ---------------------------------------------------------------------------------------------


def _tokenize(batch: Mapping[str, Sequence[Any]], tokenizer: Any, max_seq_length: int, doc_stride: int,
              source: str) -> tuple[Any, list[str], bool]:
    # Leading whitespace in questions wastes window room (some SQuAD questions have lots of it).
    questions = [q.lstrip() for q in batch["question"]]
    pad_on_right = tokenizer.padding_side == "right"
    # A question that leaves no room for `doc_stride` context tokens cannot be windowed; name it
    # instead of letting the tokenizer fail deep inside a batch.
    q_lens = tokenizer(questions, add_special_tokens=False)["input_ids"]
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    for qid, q in zip(batch["id"], q_lens, strict=True):
        if len(q) + specials + doc_stride >= max_seq_length:
            raise DataError(
                f"{source}: example {qid!r}: question has {len(q)} tokens, leaving no room for context with "
                f"max_seq_length {max_seq_length} and doc_stride {doc_stride}")
    enc = tokenizer(
        questions if pad_on_right else batch["context"],
        batch["context"] if pad_on_right else questions,
        truncation="only_second" if pad_on_right else "only_first",
        max_length=max_seq_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,  # the collator pads each batch to its own longest window
    )
    return enc, questions, pad_on_right


def prepare_train_features(batch: Mapping[str, Sequence[Any]], *, tokenizer: Any, max_seq_length: int,
                           doc_stride: int, source: str = "train",
                           keep_offsets: bool = False) -> dict[str, list[Any]]:
    """Windows with ``start_positions``/``end_positions``: the answer's tokens, or CLS if not wholly inside.

    ``keep_offsets`` (tests, audits) also returns ``offset_mapping`` and ``example_index`` so a label can be
    mapped back to characters of the context.
    """
    enc, _, pad_on_right = _tokenize(batch, tokenizer, max_seq_length, doc_stride, source)
    sample_map = enc.pop("overflow_to_sample_mapping")
    offsets_all = enc["offset_mapping"] if keep_offsets else enc.pop("offset_mapping")
    context_id = 1 if pad_on_right else 0
    starts: list[int] = []
    ends: list[int] = []
    for i, offsets in enumerate(offsets_all):
        input_ids = enc["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
        seq_ids = enc.sequence_ids(i)
        answers = batch["answers"][sample_map[i]]
        if len(answers["answer_start"]) == 0:
            starts.append(cls_index)
            ends.append(cls_index)
            continue
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        tok_start = seq_ids.index(context_id)
        tok_end = len(seq_ids) - 1 - seq_ids[::-1].index(context_id)
        if not (offsets[tok_start][0] <= start_char and offsets[tok_end][1] >= end_char):
            starts.append(cls_index)
            ends.append(cls_index)
            continue
        while tok_start <= tok_end and offsets[tok_start][0] <= start_char:
            tok_start += 1
        while tok_end >= 0 and offsets[tok_end][1] >= end_char:
            tok_end -= 1
        starts.append(tok_start - 1)
        ends.append(tok_end + 1)
    out = dict(enc)
    if keep_offsets:
        out["example_index"] = list(sample_map)
    out["start_positions"] = starts
    out["end_positions"] = ends
    out["length"] = [len(x) for x in enc["input_ids"]]
    return out


def prepare_eval_features(batch: Mapping[str, Sequence[Any]], indices: Sequence[int] | None = None, *,
                          tokenizer: Any, max_seq_length: int, doc_stride: int,
                          source: str = "validation") -> dict[str, list[Any]]:
    """Windows with ``example_index`` and context-only ``offset_mapping`` ([-1, -1] elsewhere)."""
    enc, _, pad_on_right = _tokenize(batch, tokenizer, max_seq_length, doc_stride, source)
    sample_map = enc.pop("overflow_to_sample_mapping")
    context_id = 1 if pad_on_right else 0
    base = list(indices) if indices is not None else list(range(len(batch["id"])))
    example_index: list[int] = []
    cls_index: list[int] = []
    for i in range(len(enc["input_ids"])):
        seq_ids = enc.sequence_ids(i)
        example_index.append(base[sample_map[i]])
        ids = enc["input_ids"][i]
        cls_index.append(ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0)
        enc["offset_mapping"][i] = [
            list(o) if seq_ids[k] == context_id else [-1, -1] for k, o in enumerate(enc["offset_mapping"][i])
        ]
    out = dict(enc)
    out["example_index"] = example_index
    out["cls_index"] = cls_index
    out["length"] = [len(x) for x in enc["input_ids"]]
    return out


def build_train_features(examples: datasets.Dataset, tokenizer: Any, *, max_seq_length: int, doc_stride: int,
                         num_proc: int | None = None, overwrite_cache: bool = False,
                         source: str = "train") -> datasets.Dataset:
    return examples.map(
        prepare_train_features, batched=True, num_proc=num_proc, remove_columns=examples.column_names,
        fn_kwargs={"tokenizer": tokenizer, "max_seq_length": max_seq_length, "doc_stride": doc_stride,
                   "source": source},
        load_from_cache_file=not overwrite_cache, desc="train features",
    )


def build_eval_features(examples: datasets.Dataset, tokenizer: Any, *, max_seq_length: int, doc_stride: int,
                        num_proc: int | None = None, overwrite_cache: bool = False,
                        source: str = "validation") -> datasets.Dataset:
    return examples.map(
        prepare_eval_features, batched=True, with_indices=True, num_proc=num_proc,
        remove_columns=examples.column_names,
        fn_kwargs={"tokenizer": tokenizer, "max_seq_length": max_seq_length, "doc_stride": doc_stride,
                   "source": source},
        load_from_cache_file=not overwrite_cache, desc="eval features",
    )
