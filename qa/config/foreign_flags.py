"""Flags of Hugging Face's ``run_qa_no_trainer.py`` / ``run_qa.py`` (and ``TrainingArguments``) that this job
deliberately does not have, each with what to do instead.

People switching from those scripts bring their command lines along; a bare "unknown key" (or a difflib guess
such as ``pad_to_max_length`` -> ``max_seq_length``) sends them looking. Only flags whose meaning is clear and
that have an answer here are listed; the keys this job shares with them keep their names (each declared in its section, qa/*/settings.py).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

_UPLOAD = ("this job does not push to the Hub; after training upload output_dir/final/ yourself "
           "(huggingface-cli upload REPO_ID OUTPUT_DIR/final), or set s3_uri to copy it to a bucket")
_PRECISION = "use --mixed_precision fp16|bf16|no (auto: fp16 on CUDA)"

FOREIGN_FLAGS: dict[str, str] = {
    # run_qa_no_trainer.py and run_qa.py (DataTrainingArguments / ModelArguments)
    "pad_to_max_length": "batches are padded to their longest window (to a multiple of 8), never to "
                         "max_seq_length; to bound memory lower max_seq_length or per_device_train_batch_size",
    "push_to_hub": _UPLOAD,
    "hub_model_id": _UPLOAD,
    "hub_token": _UPLOAD,
    "hub_strategy": _UPLOAD,
    "hub_private_repo": _UPLOAD,
    "config_name": "the model's own config.json is used; point model_name_or_path at a directory holding the "
                   "config you want",
    "model_type": "training from scratch is not supported; model_name_or_path must name a pretrained model",
    "use_slow_tokenizer": "answer spans need a fast tokenizer's offsets; only fast tokenizers are used",
    "trust_remote_code": "only architectures built into transformers are loaded; remote code is never run",
    "cache_dir": "set HF_HOME (or HF_HUB_CACHE) in the environment instead",
    "model_revision": "download the revision you want and point model_name_or_path at that directory",
    "token": "log in with huggingface-cli login (or set HF_TOKEN) instead",
    "use_auth_token": "log in with huggingface-cli login (or set HF_TOKEN) instead",
    # TrainingArguments (run_qa.py)
    "fp16": _PRECISION,
    "bf16": _PRECISION,
    "evaluation_strategy": "use --eval_strategy epoch|steps|end",
    "save_strategy": "use --checkpointing_steps N|epoch|null",
    "save_steps": "use --checkpointing_steps N",
    "max_steps": "use --max_train_steps",
    "warmup_steps": "use --num_warmup_steps",
    "per_gpu_train_batch_size": "use --per_device_train_batch_size",
    "per_gpu_eval_batch_size": "use --per_device_eval_batch_size",
    "logging_dir": "metrics go to the tracker (report_to) and to output_dir",
    "local_rank": "start through accelerate launch (or launch/local.sh); ranks come from its environment",
    "gradient_checkpointing": "not supported; lower per_device_train_batch_size and raise "
                              "gradient_accumulation_steps to fit memory",
    "load_best_model_at_end": "final/ is the model at the end of training; best/f1 is logged to the tracker",
}


def describe_unknown(key: str, known: Sequence[str]) -> str:
    """What to say about one unknown key: a difflib guess, else a pointer to --help."""
    close = difflib.get_close_matches(key, known, n=1)
    return f"unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else "; see train.py --help for the keys")


def unknown_keys_message(keys: Sequence[str], known: Sequence[str]) -> str:
    """One line for every unknown key at once (so a switched command line takes one run to fix, not ten)."""
    unique = list(dict.fromkeys(keys))
    advice: dict[str, list[str]] = {}  # flags with the same advice share one sentence (push_to_hub, hub_*)
    for key in unique:
        if key in FOREIGN_FLAGS:
            advice.setdefault(FOREIGN_FLAGS[key], []).append(key)
    parts = []
    for key in unique:
        if key not in FOREIGN_FLAGS:
            parts.append(describe_unknown(key, known))
        elif advice.get(FOREIGN_FLAGS[key], [None])[0] == key:
            names = advice[FOREIGN_FLAGS[key]]
            what = "a flag" if len(names) == 1 else "flags"
            parts.append(f"{', '.join(map(repr, names))}: {what} of Hugging Face's run_qa scripts that this job "
                         f"does not have: {FOREIGN_FLAGS[key]}")
    head = "" if len(unique) == 1 else f"{len(unique)} unknown keys: "
    return head + " | ".join(parts)
