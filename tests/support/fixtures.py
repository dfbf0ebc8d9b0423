"""Tiny models and data for tests: built from configs, never downloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from demo import minilm_dir  # noqa: F401 - re-exported for the tests
from qa.distributed.accelerator import free_port  # noqa: F401 - re-exported for the tests

REPO = Path(__file__).resolve().parents[2]
DEMO_DATA = REPO / "data" / "demo"
SHARED = Path(os.environ.get("QA_SHARED_DATA", REPO.parent / "shared" / "data"))


def make_tiny_model(dest: Path, arch: str = "bert", seed: int = 0, dropout: float = 0.1) -> Path:
    """A randomly initialised QA model (2 layers, hidden 32) with the MiniLM tokenizer.

    ``dropout=0`` makes runs on different world sizes comparable (dropout masks are drawn per rank).
    """
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, BertConfig, DistilBertConfig

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    if arch == "bert":
        config: Any = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, max_position_embeddings=512,
                                 hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    else:
        config = DistilBertConfig(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                  max_position_embeddings=512, dropout=dropout, attention_dropout=dropout)
    torch.manual_seed(seed)
    model = AutoModelForQuestionAnswering.from_config(config)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


def write_squad(path: Path, paragraphs: list[tuple[str, list[tuple[str, str, str | None]]]],
                version: str = "1.1") -> Path:
    """Official nested layout from (context, [(id, question, answer or None)]) tuples."""
    data = []
    for context, qas in paragraphs:
        items = []
        for qid, question, answer in qas:
            if answer is None:
                items.append({"id": qid, "question": question, "answers": [], "is_impossible": True})
            else:
                items.append({"id": qid, "question": question,
                              "answers": [{"text": answer, "answer_start": context.index(answer)}]})
        data.append({"title": "t", "paragraphs": [{"context": context, "qas": items}]})
    path.write_text(json.dumps({"version": version, "data": data}))
    return path


def subset_squad(src: Path, dest: Path, n_paragraphs: int) -> Path:
    """The first n paragraphs of a SQuAD file (keeps tests fast)."""
    obj = json.loads(src.read_text())
    out, left = [], n_paragraphs
    for art in obj["data"]:
        if left <= 0:
            break
        paras = art["paragraphs"][:left]
        left -= len(paras)
        out.append({**art, "paragraphs": paras})
    dest.write_text(json.dumps({**obj, "data": out}))
    return dest


def base_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "HF_DATASETS_CACHE": str(tmp / "hf_cache"), "WANDB_MODE": "offline", "WANDB_DIR": str(tmp / "wandb"),
        "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
    })
    return env


def launch(args: list[str], *, tmp: Path, nproc: int = 2, deepspeed: bool = True, env: dict | None = None,
           timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """``accelerate launch train.py`` with nproc CPU processes (gloo)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(nproc),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port())]
    cmd += ["--use_deepspeed"] if deepspeed else (["--multi_gpu"] if nproc > 1 else [])
    cmd += [str(REPO / "train.py"), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env or base_env(tmp), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc
