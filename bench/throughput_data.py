"""bench/train_throughput.py's inputs: SQuAD dev windows (real, or synthetic from the recorded length histogram),
the grouped batch plan, and the collation each timed run pads its own way. Like the benchmark, it needs only torch,
numpy and transformers: the qa/ modules it uses are loaded by file path."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def load_qa_module(name: str) -> ModuleType:
    # Loaded by file path rather than ``import qa.<name>`` so that whatever qa/__init__.py imports
    # (accelerate, deepspeed, ...) is not needed on a bare GPU box; these modules need only torch + numpy.
    spec = importlib.util.spec_from_file_location(f"qa_{name.replace('/', '_')}_bench", REPO / "qa" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look modules up here
    spec.loader.exec_module(module)
    return module


sampling = load_qa_module("data/sampler")

PAD_MULTIPLE = 8
BERT_CASED_VOCAB = 28996  # bert-base-cased / distilbert-base-cased vocabulary size
CLS_ID, SEP_ID = 101, 102  # bert-base-cased [CLS], [SEP]; [PAD] is 0

@dataclass
class Windows:
    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    lengths: np.ndarray
    source: str


def load_real_windows(data_dir: Path, max_seq_length: int) -> Windows | None:
    squad = data_dir / "squad-v1.1" / "dev-v1.1.json"
    tok_dir = data_dir / "tokenizers" / "bert-base-cased"
    if not (squad.is_file() and tok_dir.is_dir()):
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    questions, contexts = [], []
    for article in json.loads(squad.read_text())["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                questions.append(qa["question"].lstrip())
                contexts.append(paragraph["context"])
    enc = tokenizer(
        questions,
        contexts,
        truncation="only_second",
        max_length=max_seq_length,
        stride=128,
        return_overflowing_tokens=True,
    )
    ids = enc["input_ids"]
    return Windows(
        ids,
        enc["token_type_ids"],
        np.array([len(x) for x in ids], dtype=np.int64),
        f"SQuAD v1.1 dev, real windows ({len(ids)})",
    )


def synthetic_windows(max_seq_length: int, n: int = 10_822, seed: int = 0) -> Windows:
    lengths = np.minimum(sampling.synthetic_squad_lengths(n, seed=seed), max_seq_length)
    rng = np.random.default_rng(seed)
    ids, types = [], []
    for length in lengths.tolist():
        # [CLS] question [SEP] context [SEP] with a ~12-token question, like the real windows.
        q = min(12, max(1, length - 4))
        body = rng.integers(1000, BERT_CASED_VOCAB, length).tolist()
        body[0], body[q + 1], body[-1] = CLS_ID, SEP_ID, SEP_ID
        ids.append(body)
        types.append([0] * (q + 2) + [1] * (length - q - 2))
    return Windows(ids, types, lengths, f"synthetic windows from the recorded SQuAD dev histogram ({n})")


def plan_batches(lengths: np.ndarray, batch_size: int, count: int, seed: int) -> list[list[int]]:
    """The first ``count`` batches of the grouped order, continuing into later epochs if needed."""
    out: list[list[int]] = []
    epoch = 0
    while len(out) < count:
        out += sampling.grouped_batch_order(lengths, batch_size, seed=seed, epoch=epoch)
        epoch += 1
    return out[:count]


def collate(
    windows: Windows,
    batch: list[int],
    pad_to: int,
    with_token_types: bool,
    rng: np.random.Generator,
    pin: bool,
) -> dict[str, torch.Tensor]:
    n = len(batch)
    ids = torch.zeros(n, pad_to, dtype=torch.long)
    mask = torch.zeros(n, pad_to, dtype=torch.long)
    types = torch.zeros(n, pad_to, dtype=torch.long)
    starts, ends = [], []
    for row, i in enumerate(batch):
        length = int(windows.lengths[i])
        ids[row, :length] = torch.tensor(windows.input_ids[i])
        mask[row, :length] = 1
        types[row, :length] = torch.tensor(windows.token_type_ids[i])
        # Labels do not change the compute; any in-window span will do.
        s = int(rng.integers(0, length))
        starts.append(s)
        ends.append(min(length - 1, s + int(rng.integers(0, 8))))
    out = {
        "input_ids": ids,
        "attention_mask": mask,
        "start_positions": torch.tensor(starts),
        "end_positions": torch.tensor(ends),
    }
    if with_token_types:
        out["token_type_ids"] = types
    if pin:
        out = {k: v.pin_memory() for k, v in out.items()}
    return out
