"""Ask a trained model a question: what transformers' removed ``pipeline("question-answering")`` did.

Windows come from evaluation's feature code (``qa.data.features.prepare_eval_features``) and answers from
its decoder (``qa.eval.evaluator.decode_features``), so an answer here is the answer an evaluation of the
same model with the same ``max_seq_length``/``doc_stride``/``n_best_size``/``max_answer_length`` writes to
``predictions.json``: one rule, not a second one.

``score`` is the decoder's n-best ``probability``: the softmax of start + end logit over the example's
n-best candidates (the null answer among them under ``handle_impossible_answer``). It differs from the old
pipeline's score (product of per-window start and end softmaxes) but is likewise in (0, 1], and answers
rank by it.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, DataCollatorWithPadding

from qa.data.features import prepare_eval_features
from qa.distributed.gather import LOGIT_PAD, eval_batches
from qa.errors import ConfigError, DataError
from qa.eval.decode import Decoded
from qa.eval.evaluator import EvalExamples, EvalFeatures, decode_features
from qa.eval.settings import DecodeSettings

Answer = dict[str, Any]
_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
_DTYPES: dict[str, str | torch.dtype] = {"auto": "auto", "float32": torch.float32, "float16": torch.float16,
                                         "bfloat16": torch.bfloat16}


def _check_tokenizer(tokenizer: Any, where: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"{where}: the tokenizer has no fast version; answer offsets need one")
    if getattr(tokenizer, "padding_side", "right") != "right":
        raise ConfigError(f"{where}: the tokenizer pads on the left; only right-padding tokenizers are supported")


def _device(device: str | int | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(f"cuda:{device}" if isinstance(device, int) else device)


def _texts(value: str | Sequence[str], name: str) -> list[str]:
    items = [value] if isinstance(value, str) else list(value)
    for i, v in enumerate(items):
        if not isinstance(v, str) or not v.strip():
            raise DataError(f"{name} {i}: expected a non-empty string, got {v!r}")
    return items


class QuestionAnswerer:
    """An extractive QA model and its tokenizer, called like the removed pipeline.

    >>> qa = QuestionAnswerer.from_pretrained("outputs/run/final")
    >>> qa(question="Where is the mill?", context="The old mill stands beside the river.")
    {'answer': 'beside the river', 'score': 0.62, 'start': 20, 'end': 36}
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, device: str | int | torch.device | None = None,
                 name: str = "model") -> None:
        _check_tokenizer(tokenizer, name)
        self.tokenizer = tokenizer
        self.device = _device(device)
        self.model = model.to(self.device).eval()
        accepted = set(inspect.signature(self.model.forward).parameters)
        self.input_names = [k for k in _INPUT_NAMES if k in accepted]
        # Padded as evaluation's collator pads (to a multiple of 8).
        self.collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | Path, *, device: str | int | torch.device | None = None,
                        dtype: str | torch.dtype | None = None) -> QuestionAnswerer:
        """Model and tokenizer from an exported directory (``output_dir/final``) or a Hub id.

        ``dtype``: ``None`` or ``"auto"`` (as saved, transformers' default), ``"float32"``, ``"float16"``,
        ``"bfloat16"`` or a torch dtype. Logits are decoded in float32 whatever the model's dtype.
        A directory that does not exist, or holds no model, is a :class:`~qa.errors.ConfigError`.
        """
        name = str(path_or_hub_id)
        path = Path(name).expanduser()
        looks_local = path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
        if looks_local and not path.is_dir():
            raise ConfigError(f"model_name_or_path: {name}: no such directory")
        if looks_local and not (path / "config.json").is_file():
            raise ConfigError(f"model_name_or_path: {name}: no config.json there (not a saved model; "
                              "train.py exports one to OUTPUT_DIR/final)")
        kwargs: dict[str, Any] = {}
        if isinstance(dtype, str) and dtype not in _DTYPES:
            raise ConfigError(f"dtype: {dtype!r} is not one of {list(_DTYPES)}")
        if dtype is not None:
            kwargs["dtype"] = _DTYPES[dtype] if isinstance(dtype, str) else dtype
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path) if looks_local else name, use_fast=True)
            model = AutoModelForQuestionAnswering.from_pretrained(str(path) if looks_local else name, **kwargs)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"model_name_or_path: cannot load {name}: {first}") from None
        return cls(model, tokenizer, device=device, name=f"model_name_or_path: {name}")

    # -------------------------------------------------------------------------------------------
    # The pipeline's call
    # -------------------------------------------------------------------------------------------

    def __call__(self, question: str | Sequence[str], context: str | Sequence[str], *, top_k: int = 1,
                 max_answer_len: int = DecodeSettings.max_answer_length, max_seq_len: int = 384, doc_stride: int = 128,
                 handle_impossible_answer: bool = False, null_score_diff_threshold: float = DecodeSettings.null_score_diff_threshold,
                 batch_size: int = 32, n_best_size: int = DecodeSettings.n_best_size) -> Answer | list[Answer] | list[list[Answer]]:
        """Answers as the pipeline returned them: a dict for one question (a list of up to ``top_k`` dicts
        when ``top_k > 1``), a list of those for a list of questions. One question may go with many contexts
        and the reverse.

        Each answer: ``answer`` (trimmed text), ``score`` (see the module docstring), ``start``/``end``
        (character offsets, ``context[start:end] == answer``). ``handle_impossible_answer``: SQuAD v2
        decoding, the answer is ``""`` (start = end = 0) when null score - best span score >
        ``null_score_diff_threshold``. Other answers follow the first in n-best order, one per span.
        """
        questions, contexts = _texts(question, "question"), _texts(context, "context")
        if len(questions) == 1 and len(contexts) > 1:
            questions = questions * len(contexts)
        elif len(contexts) == 1 and len(questions) > 1:
            contexts = contexts * len(questions)
        elif len(questions) != len(contexts):
            raise DataError(f"question and context: {len(questions)} questions but {len(contexts)} contexts")
        ids = [str(i) for i in range(len(questions))]
        if top_k < 1:
            raise ConfigError(f"top_k: must be >= 1, got {top_k}")
        decoded = self.predict(
            ids, questions, contexts, max_answer_len=max_answer_len, max_seq_len=max_seq_len,
            doc_stride=doc_stride, handle_impossible_answer=handle_impossible_answer,
            null_score_diff_threshold=null_score_diff_threshold, batch_size=batch_size,
            n_best_size=max(n_best_size, top_k))
        results = [answers_of(decoded, qid)[:top_k] for qid in ids]
        if top_k == 1:
            results = [r[0] for r in results]  # type: ignore[misc]
        single = isinstance(question, str) and isinstance(context, str)
        return results[0] if single else results

    def predict(self, ids: Sequence[str], questions: Sequence[str], contexts: Sequence[str], *,
                max_answer_len: int = DecodeSettings.max_answer_length, max_seq_len: int = 384, doc_stride: int = 128,
                handle_impossible_answer: bool = False, null_score_diff_threshold: float = DecodeSettings.null_score_diff_threshold,
                batch_size: int = 32, n_best_size: int = DecodeSettings.n_best_size, progress: bool = False,
                source: str = "input") -> Decoded:
        """Windows, logits and evaluation's decoding for many examples: what ``predictions.json`` holds."""
        for key, value in (("max_answer_len", max_answer_len), ("batch_size", batch_size),
                           ("n_best_size", n_best_size), ("max_seq_len", max_seq_len)):
            if value < 1:
                raise ConfigError(f"{key}: must be >= 1, got {value}")
        if not 0 <= doc_stride < max_seq_len:
            raise ConfigError(f"doc_stride: must be >= 0 and smaller than max_seq_len ({max_seq_len}), "
                              f"got {doc_stride}")
        limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(limit, int) and limit < max_seq_len:
            raise ConfigError(f"max_seq_len: {max_seq_len} is longer than the model's {limit} tokens")
        feats = prepare_eval_features({"id": list(ids), "question": list(questions), "context": list(contexts)},
                                      tokenizer=self.tokenizer, max_seq_length=max_seq_len, doc_stride=doc_stride,
                                      source=source)
        start, end = self._logits(feats, batch_size, max_seq_len, progress)
        arrays = EvalFeatures.of_windows(feats, max_seq_len)
        examples = EvalExamples(ids=list(ids), contexts=list(contexts), answers=[[] for _ in ids])
        # Under v2 at least two candidates, so that the best span is kept even when the null outranks it.
        return decode_features(examples, arrays, start, end,
                               n_best_size=max(n_best_size, 2 if handle_impossible_answer else 1),
                               max_answer_length=max_answer_len, version_2_with_negative=handle_impossible_answer,
                               null_score_diff_threshold=null_score_diff_threshold)

    def _logits(self, feats: dict[str, list[Any]], batch_size: int, seq_len: int,
                progress: bool) -> tuple[np.ndarray, np.ndarray]:
        """[n_windows, seq_len] start/end logits, padding = LOGIT_PAD: what evaluation's gather yields."""
        from tqdm.auto import tqdm

        n = len(feats["input_ids"])
        start = np.full((n, seq_len), LOGIT_PAD, dtype=np.float32)
        end = np.full((n, seq_len), LOGIT_PAD, dtype=np.float32)
        names = [k for k in self.input_names if k in feats]
        with tqdm(total=n, desc="predict", unit="window", disable=not progress) as bar, torch.inference_mode():
            # Length-sorted batches, as evaluation runs them on one process: little padding.
            for rows in eval_batches(feats["length"], batch_size, world_size=1, rank=0):
                batch = self.collator([{k: feats[k][i] for k in names} for i in rows])
                batch = {k: v.to(self.device) for k, v in batch.items()}
                out = self.model(**batch)
                s, e = out.start_logits.float(), out.end_logits.float()
                if "attention_mask" in batch:
                    s = s.masked_fill(batch["attention_mask"] == 0, LOGIT_PAD)
                    e = e.masked_fill(batch["attention_mask"] == 0, LOGIT_PAD)
                s, e = s[:, :seq_len].cpu().numpy(), e[:, :seq_len].cpu().numpy()
                start[rows, : s.shape[1]] = s
                end[rows, : e.shape[1]] = e
                bar.update(len(rows))
        return start, end


def answers_of(decoded: Decoded, qid: str) -> list[Answer]:
    """An example's answers: the prediction first, then the rest of its n-best, one per character span."""
    first = {"answer": decoded.predictions[qid], "start": decoded.prediction_spans[qid][0],
             "end": decoded.prediction_spans[qid][1]}
    seen: set[tuple[int, int, str]] = set()
    answers: list[Answer] = []
    for entry, (a, b) in zip(decoded.nbest[qid], decoded.spans[qid], strict=True):
        key = (a, b, entry["text"])
        if key in seen:  # overlapping windows propose the same span; its best-scored copy stands
            continue
        seen.add(key)
        answer = {"answer": entry["text"], "score": entry["probability"], "start": a, "end": b}
        if key == (first["start"], first["end"], first["answer"]):
            answers.insert(0, answer)  # under v2 the threshold, not the n-best order, picks the answer
        else:
            answers.append(answer)
    return answers
