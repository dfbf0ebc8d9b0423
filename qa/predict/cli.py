"""``python -m qa.predict``: answers from a trained model, for one question or a whole file.

    python -m qa.predict --model_name_or_path outputs/run/final --question "Who?" --context "..."
    python -m qa.predict --model_name_or_path outputs/run/final --input questions.jsonl --output preds.json

One question prints one JSON object per answer (``--top_k``) on stdout: ``answer``, ``score``, ``start``,
``end``. A file (SQuAD nested JSON, flat JSON or JSONL; ``answers`` optional) gives ``{id: answer}`` at
``--output``, exactly as evaluation's ``predictions.json``, and the n-best lists beside it
(``preds.json`` -> ``preds_nbest.json``; ``predictions.json`` -> ``nbest_predictions.json``).
Mistakes in the input (missing model, unreadable file, a row without question or context) are one
line on stderr and exit status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from qa.errors import EXIT_USER_ERROR, UserError
from qa.eval.settings import DecodeSettings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m qa.predict", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model_name_or_path", required=True, help="exported model directory (OUTPUT_DIR/final)")
    p.add_argument("--question", help="one question (with --context)")
    p.add_argument("--context", help="the text to find its answer in")
    p.add_argument("--input", type=Path, help="SQuAD JSON / flat JSON / JSONL file of questions")
    p.add_argument("--output", type=Path, help="where --input's predictions go ({id: answer})")
    p.add_argument("--max_predict_samples", type=int, default=None, help="answer only the first N questions")
    p.add_argument("--top_k", type=int, default=1, help="answers per question (--question only)")
    # Both spellings: the pipeline's names and the training config's.
    p.add_argument("--max_answer_len", "--max_answer_length", dest="max_answer_len", type=int, default=DecodeSettings.max_answer_length)
    p.add_argument("--max_seq_len", "--max_seq_length", dest="max_seq_len", type=int, default=384)
    p.add_argument("--doc_stride", type=int, default=128, help="tokens shared by consecutive windows")
    p.add_argument("--n_best_size", type=int, default=DecodeSettings.n_best_size)
    p.add_argument("--handle_impossible_answer", "--version_2_with_negative", dest="handle_impossible_answer",
                   action="store_true", help="SQuAD v2: answer \"\" when the null answer wins")
    p.add_argument("--null_score_diff_threshold", type=float, default=DecodeSettings.null_score_diff_threshold)
    p.add_argument("--batch_size", type=int, default=32, help="windows per forward pass")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when present)")
    p.add_argument("--dtype", default=None, choices=["auto", "float32", "float16", "bfloat16"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.input is None and (args.question is None or args.context is None):
        parser.error("give --question and --context, or --input FILE --output FILE")
    if args.input is not None and (args.question is not None or args.context is not None):
        parser.error("--input answers a file; --question/--context answer one question: not both")
    if args.input is not None and args.output is None:
        parser.error("--input needs --output (where the predictions go)")
    try:
        return _run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR


def _run(args: argparse.Namespace) -> int:
    from qa.predict.answerer import QuestionAnswerer

    settings = {"max_answer_len": args.max_answer_len, "max_seq_len": args.max_seq_len,
                "doc_stride": args.doc_stride, "handle_impossible_answer": args.handle_impossible_answer,
                "null_score_diff_threshold": args.null_score_diff_threshold, "batch_size": args.batch_size,
                "n_best_size": args.n_best_size}
    if args.input is None:
        qa = QuestionAnswerer.from_pretrained(args.model_name_or_path, device=args.device, dtype=args.dtype)
        answers = qa(question=args.question, context=args.context, top_k=args.top_k, **settings)
        for a in answers if isinstance(answers, list) else [answers]:
            print(json.dumps({k: a[k] for k in ("answer", "score", "start", "end")}, ensure_ascii=False))
        return 0

    from qa.data.formats import read_squad_file
    from qa.errors import ConfigError
    from qa.eval.outputs import write_predictions

    if args.max_predict_samples is not None and args.max_predict_samples < 1:
        raise ConfigError(f"max_predict_samples: must be >= 1, got {args.max_predict_samples}")
    records = read_squad_file(args.input, require_answers=False)[:args.max_predict_samples]
    qa = QuestionAnswerer.from_pretrained(args.model_name_or_path, device=args.device, dtype=args.dtype)
    decoded = qa.predict([r["id"] for r in records], [r["question"] for r in records],
                         [r["context"] for r in records], progress=True, source=str(args.input), **settings)
    paths = write_predictions(args.output, decoded, version_2_with_negative=args.handle_impossible_answer)
    print(f"{len(records)} questions answered; wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0
