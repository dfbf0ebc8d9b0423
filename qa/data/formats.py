"""SQuAD-format files in (official nested JSON, flat JSON, JSONL, Hub datasets), checked examples out.

Reading is strict so that no feature ever carries a silent wrong label: every problem names the file and
the example id.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import datasets

from qa.errors import DataError

logger = logging.getLogger(__name__)

HUB_DATASETS = {"squad": "train", "squad_v2": "train"}



# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _flat_record(raw: Mapping[str, Any], where: str, title: str | None = None, context: str | None = None,
                 require_answers: bool = True) -> dict[str, Any]:
    """One checked example; without ``require_answers`` (prediction) a missing ``answers`` becomes None."""
    qid = raw.get("id")
    if qid is None or qid == "":
        raise DataError(f"{where}: question without an 'id'")
    qid = str(qid)
    ctx = raw.get("context", context)
    question = raw.get("question")
    for name, value in (("context", ctx), ("question", question)):
        if not isinstance(value, str):
            raise DataError(f"{where}: example {qid!r}: missing or non-text field {name!r}")
    if not ctx.strip():
        raise DataError(f"{where}: example {qid!r}: empty context")
    if not question.strip():
        raise DataError(f"{where}: example {qid!r}: empty question")
    answers = raw.get("answers")
    if answers is None and not require_answers:
        return {"id": qid, "title": str(raw.get("title", title) or ""), "context": ctx, "question": question,
                "answers": None}
    if answers is None:
        raise DataError(f"{where}: example {qid!r}: missing field 'answers'")
    # Official files hold a list of {text, answer_start}; flat/hub files hold {text: [...], answer_start: [...]}.
    if isinstance(answers, list):
        try:
            texts = [str(a["text"]) for a in answers]
            starts = [int(a["answer_start"]) for a in answers]
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{where}: example {qid!r}: each answer needs 'text' and 'answer_start'") from None
    elif isinstance(answers, Mapping) and "text" in answers and "answer_start" in answers:
        texts = [str(t) for t in answers["text"]]
        try:
            starts = [int(s) for s in answers["answer_start"]]
        except (TypeError, ValueError):
            raise DataError(f"{where}: example {qid!r}: answer_start must be integers") from None
        if len(texts) != len(starts):
            raise DataError(f"{where}: example {qid!r}: answers.text and answers.answer_start differ in length")
    else:
        raise DataError(f"{where}: example {qid!r}: 'answers' must be a list or {{text, answer_start}}")
    impossible = bool(raw.get("is_impossible", False))
    if impossible and texts:
        raise DataError(f"{where}: example {qid!r}: is_impossible is true but answers are given")
    return {
        "id": qid,
        "title": str(raw.get("title", title) or ""),
        "context": ctx,
        "question": question,
        "answers": {"text": texts, "answer_start": starts},
    }


def read_squad_file(path: str | os.PathLike, *, require_answers: bool = True) -> list[dict[str, Any]]:
    """Read official nested SQuAD JSON, a flat JSON list (or ``{"data": [flat...]}``) or JSONL.

    ``require_answers=False`` (prediction) accepts examples without ``answers``; theirs is None.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise DataError(f"{path}: cannot read: {reason}") from None
    records: list[dict[str, Any]] = []
    is_jsonl = path.suffix == ".jsonl"
    if not is_jsonl:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            # Several JSON objects one per line: JSONL under another name.
            if e.msg != "Extra data":
                raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
            is_jsonl = True
    if is_jsonl:
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object")
            records.append(_flat_record(row, f"{path}:{lineno}", require_answers=require_answers))
    else:
        items = obj.get("data") if isinstance(obj, dict) else obj
        if not isinstance(items, list):
            raise DataError(f"{path}: expected the SQuAD layout {{'data': [...]}} or a list of examples")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise DataError(f"{path}: data[{i}] is not an object")
            if "paragraphs" in item:
                for j, para in enumerate(item["paragraphs"]):
                    where = f"{path} (data[{i}].paragraphs[{j}])"
                    if "context" not in para or "qas" not in para:
                        raise DataError(f"{where}: paragraph needs 'context' and 'qas'")
                    for qa in para["qas"]:
                        records.append(_flat_record(qa, where, item.get("title"), para["context"],
                                                    require_answers))
            else:
                records.append(_flat_record(item, f"{path} (data[{i}])", require_answers=require_answers))
    seen: set[str] = set()
    for r in records:
        if r["id"] in seen:
            raise DataError(f"{path}: duplicate example id {r['id']!r}")
        seen.add(r["id"])
    if not records:
        raise DataError(f"{path}: no examples found")
    return records


def misaligned_answers(record: Mapping[str, Any]) -> list[int]:
    """Indices of answers whose ``answer_start`` does not point at their text."""
    ctx = record["context"]
    if record["answers"] is None:  # unlabeled (prediction)
        return []
    return [
        k for k, (t, s) in enumerate(zip(record["answers"]["text"], record["answers"]["answer_start"], strict=True))
        if s < 0 or ctx[s: s + len(t)] != t
    ]


def check_alignment(records: list[dict[str, Any]], source: str, *, skip: bool,
                    is_train: bool) -> tuple[list[dict[str, Any]], int]:
    """Training needs exact character spans; a bad one is an error unless the user chose to skip.

    Evaluation only scores answer *texts*, so misaligned starts there are counted and kept.
    """
    bad = [r for r in records if misaligned_answers(r)]
    if not bad:
        return records, 0
    if not is_train:
        logger.warning("%s: %d eval examples have answer_start not pointing at the answer text "
                       "(kept: evaluation scores answer texts only), e.g. %r", source, len(bad), bad[0]["id"])
        return records, 0
    if not skip:
        r = bad[0]
        k = misaligned_answers(r)[0]
        raise DataError(
            f"{source}: example {r['id']!r}: answer_start {r['answers']['answer_start'][k]} does not point at "
            f"answer {r['answers']['text'][k]!r} ({len(bad)} such examples; set skip_misaligned_answers: true "
            "to drop them)")
    bad_ids = {r["id"] for r in bad}
    logger.warning("%s: skipped %d training examples whose answer_start does not match the answer text",
                   source, len(bad))
    return [r for r in records if r["id"] not in bad_ids], len(bad)


def _generate(path: str, mtime_ns: int, size: int, skip: bool, is_train: bool,
              require_answers: bool = True) -> Iterator[dict[str, Any]]:
    # mtime and size are arguments only so that the datasets fingerprint changes when the file does.
    records, _ = check_alignment(read_squad_file(path, require_answers=require_answers), path, skip=skip,
                                 is_train=is_train)
    yield from records


_FEATURES = datasets.Features({
    "id": datasets.Value("string"), "title": datasets.Value("string"),
    "context": datasets.Value("string"), "question": datasets.Value("string"),
    "answers": {"text": datasets.Sequence(datasets.Value("string")),
                "answer_start": datasets.Sequence(datasets.Value("int32"))},
})


def _from_generator(data_file: str, st: os.stat_result, skip: bool, is_train: bool,
                    require_answers: bool = True) -> datasets.Dataset:
    return datasets.Dataset.from_generator(
        _generate,
        gen_kwargs={"path": str(Path(data_file).resolve()), "mtime_ns": st.st_mtime_ns, "size": st.st_size,
                    "skip": skip, "is_train": is_train, "require_answers": require_answers},
        features=_FEATURES,
    )


def load_examples(*, dataset_name: str | None, dataset_config_name: str | None, data_file: str | None,
                  split: str, skip_misaligned: bool = False, max_samples: int | None = None,
                  version_2_with_negative: bool = False, require_answers: bool = True) -> datasets.Dataset:
    """Examples with columns id, title, context, question, answers; ``max_samples`` cuts examples.

    ``require_answers=False`` (prediction, local files only): unlabeled examples load, ``answers`` None.
    """
    is_train = split == "train"
    if data_file is not None:
        # Our own validating reader (clear errors naming file and id); from_generator caches the result
        # under a fingerprint of its arguments so the features built on it are cached too.
        st = os.stat(data_file)
        try:
            ds = _from_generator(data_file, st, skip_misaligned, is_train, require_answers)
        except datasets.exceptions.DatasetGenerationError as e:
            # datasets wraps our error; users should see the file and example id, not a generic failure.
            cause = e.__cause__ or e.__context__
            if isinstance(cause, DataError):
                raise cause from None
            raise
    else:
        if dataset_name is None:
            raise DataError(f"no data for split {split!r}: set dataset_name or a local file")
        ds = datasets.load_dataset(dataset_name, dataset_config_name,
                                   split="train" if is_train else "validation")
    if not version_2_with_negative:
        n_empty = sum(1 for a in ds["answers"] if a is not None and len(a["text"]) == 0)
        if n_empty:
            raise DataError(f"{data_file or dataset_name}: {n_empty} examples have no answer; "
                            "set version_2_with_negative: true for SQuAD v2-style data")
    if max_samples is not None:
        ds = ds.select(range(min(max_samples, len(ds))))
    return ds
