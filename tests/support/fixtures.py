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


def _launch_cmd(args: list[str], nproc: int, deepspeed: bool) -> list[str]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(nproc),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port())]
    cmd += ["--use_deepspeed"] if deepspeed else (["--multi_gpu"] if nproc > 1 else [])
    return cmd + [str(REPO / "train.py"), *args]


def workers(launcher_pid: int) -> dict[int, Any]:
    """rank -> psutil.Process of the train.py workers started by a launcher (they run in sessions of their own)."""
    import psutil

    found = {}
    for child in psutil.Process(launcher_pid).children(recursive=True):
        try:
            if any(a.endswith("train.py") for a in child.cmdline()) and "RANK" in child.environ():
                found[int(child.environ()["RANK"])] = child
        except psutil.Error:  # exited meanwhile
            continue
    return found


def launch_and_crash(args: list[str], *, tmp: Path, after: Path, kill_rank: int = 1, env: dict | None = None,
                     nproc: int = 2, timeout: float = 600) -> subprocess.CompletedProcess:
    """A real crash, injected from outside: once ``after`` exists (say a checkpoint's COMPLETE marker), freeze
    every worker (SIGSTOP, so none runs on meanwhile), SIGKILL rank ``kill_rank``, and let the rest go on.
    """
    import signal
    import time

    proc = subprocess.Popen(_launch_cmd(args, nproc, True), cwd=REPO, env=env or base_env(tmp),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    try:
        while not after.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read() if proc.stdout else ""
                raise AssertionError(f"{after} never appeared (exit {proc.returncode}):\n{out[-6000:]}")
            time.sleep(0.01)  # polling a file for a condition, not waiting for time to pass
        ranks = workers(proc.pid)
        assert kill_rank in ranks, f"no worker with rank {kill_rank}: {ranks}"
        for p in ranks.values():
            p.send_signal(signal.SIGSTOP)
        ranks[kill_rank].send_signal(signal.SIGKILL)
        for p in ranks.values():
            try:
                p.send_signal(signal.SIGCONT)
            except Exception:  # noqa: BLE001 - the killed one is gone
                pass
        out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def spawn(args: list[str], *, tmp: Path, log: Path, nproc: int = 2, env: dict | None = None) -> subprocess.Popen:
    """``accelerate launch train.py`` in the background (DeepSpeed), its output going to ``log``: a file, since a
    pipe that nobody reads while the test polls would fill up and block the run."""
    with open(log, "w") as out:
        return subprocess.Popen(_launch_cmd(args, nproc, True), cwd=REPO, env=env or base_env(tmp), stdout=out,
                                stderr=subprocess.STDOUT, text=True)


def launch(args: list[str], *, tmp: Path, nproc: int = 2, deepspeed: bool = True, env: dict | None = None,
           timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """``accelerate launch train.py`` with nproc CPU processes (gloo)."""
    proc = subprocess.run(_launch_cmd(args, nproc, deepspeed), cwd=REPO, env=env or base_env(tmp), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc
