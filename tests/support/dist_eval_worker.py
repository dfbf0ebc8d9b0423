"""Run under `accelerate launch`: gather eval logits for awkward feature counts and check them on rank 0."""

from __future__ import annotations

import json
import sys
from datetime import timedelta

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs
from transformers import AutoModelForQuestionAnswering, DataCollatorWithPadding, PreTrainedTokenizerFast

from qa.distributed.gather import gather_eval_logits


def main(model_dir: str, out_path: str) -> None:
    acc = Accelerator(cpu=True, kwargs_handlers=[InitProcessGroupKwargs(backend="gloo", timeout=timedelta(minutes=5))])
    assert acc.num_processes == 2
    model = AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()
    tok = PreTrainedTokenizerFast.from_pretrained(model_dir)
    collate = DataCollatorWithPadding(tok)
    rng = np.random.default_rng(0)
    results = []
    # (features, batch size): uneven last batch, more ranks than batches, a single feature.
    for n, bs in ((7, 2), (1, 4), (3, 4), (10, 3), (5, 1)):
        lengths = rng.integers(5, 40, size=n)
        rows = [{"input_ids": [101] + rng.integers(1000, 2000, size=int(n_tok) - 2).tolist() + [102],
                 "attention_mask": [1] * int(n_tok), "length": int(n_tok)} for n_tok in lengths]
        feats = datasets.Dataset.from_list(rows)
        got = gather_eval_logits(acc, model, feats, input_names=["input_ids", "attention_mask"], collate_fn=collate,
                                 batch_size=bs, seq_len=48)
        if acc.is_main_process:
            ok = True
            for i, r in enumerate(rows):  # feature order and values, against a plain forward
                with torch.no_grad():
                    ref = model(input_ids=torch.tensor([r["input_ids"]]))
                k = len(r["input_ids"])
                ok &= bool(np.allclose(got.start_logits[i, :k], ref.start_logits[0].numpy(), atol=1e-5))
                ok &= bool(np.allclose(got.end_logits[i, :k], ref.end_logits[0].numpy(), atol=1e-5))
                ok &= bool((got.start_logits[i, k:] <= -1e3).all())
            results.append({"n": n, "bs": bs, "ok": ok})
        else:
            assert got is None
    if acc.is_main_process:
        with open(out_path, "w") as f:
            json.dump(results, f)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
