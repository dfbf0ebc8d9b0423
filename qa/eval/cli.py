"""Rank-0 evaluation glue (decode + score + write) and ``python -m qa.eval`` to redo it offline.

The training loop gathers start/end logits on rank 0 and calls :func:`decode_and_score`, then
:func:`write_eval_outputs` and (optionally) :func:`save_eval_arrays`. The CLI reloads those arrays and
re-decodes with other settings (n-best size, answer length, null threshold) without a GPU or a model:

    python -m qa.eval --output_dir outputs/run1 --null_score_diff_threshold -1.5 --write --out /tmp/t

Its stdout is exactly the text of ``eval_results.json`` for the same settings (timings go to stderr),
so ``diff <(python -m qa.eval --output_dir D) D/eval_results.json`` checks a run's numbers."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qa.eval.evaluator import DECODE_DEFAULTS, RUN_CONFIG_FILE, decode_and_score
from qa.eval.outputs import load_eval_arrays, metrics_json, write_eval_outputs
from qa.eval.settings import DecodeSettings

# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------


def _str2bool(v: str | bool) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("true", "1", "yes", "y", "on"):
        return True
    if s in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def _run_config(output_dir: Path) -> tuple[dict[str, Any], Path | None]:
    """Decoding settings the run used: the run_config.yaml the trainer writes."""
    path = output_dir / RUN_CONFIG_FILE
    if path.is_file():
        import yaml

        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(cfg, dict):
            raise ValueError(f"{path}: expected a mapping, got {type(cfg).__name__}")
        return {k: cfg[k] for k in DECODE_DEFAULTS if cfg.get(k) is not None}, path
    return {}, None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m qa.eval",
        description="Re-decode and re-score an evaluation from the arrays a run saved (eval_logits.npz, "
                    "eval_features.npz, eval_examples.jsonl). Decoding settings default to the run's "
                    "run_config.yaml, then to the values shown.")
    p.add_argument("--output_dir", required=True, type=Path, help="run directory holding the saved arrays")
    p.add_argument("--n_best_size", type=int, default=None, help=f"default: run config, else {DecodeSettings.n_best_size}")
    p.add_argument("--max_answer_length", type=int, default=None, help=f"default: run config, else {DecodeSettings.max_answer_length}")
    p.add_argument("--null_score_diff_threshold", type=float, default=None,
                   help=f"default: run config, else {DecodeSettings.null_score_diff_threshold}")
    p.add_argument("--version_2_with_negative", type=_str2bool, default=None, metavar="true|false",
                   help="default: run config, else false")
    p.add_argument("--write", action="store_true",
                   help="write eval_results.json, predictions.json, nbest_predictions.json "
                        "(+ null_odds.json)")
    p.add_argument("--out", type=Path, default=None,
                   help="write the outputs here instead of --output_dir (implies --write)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out_dir: Path = args.output_dir
    try:
        examples, feats, start, end = load_eval_arrays(out_dir)
    except FileNotFoundError as e:
        print(f"error: {e}\n(a run saves them when evaluating with save_logits enabled)", file=sys.stderr)
        return 2
    except (ValueError, KeyError, OSError) as e:
        print(f"error: {out_dir}: unreadable saved evaluation: {e}", file=sys.stderr)
        return 2
    try:
        from_config, config_path = _run_config(out_dir)
    except ValueError as e:  # json.JSONDecodeError is one; so is a YAML file that is not a mapping
        print(f"error: {out_dir}: unreadable run config: {e}", file=sys.stderr)
        return 2
    settings = {**DECODE_DEFAULTS, **from_config}
    for key in DECODE_DEFAULTS:
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    try:
        settings = {
            "n_best_size": int(settings["n_best_size"]),
            "max_answer_length": int(settings["max_answer_length"]),
            "version_2_with_negative": _str2bool(settings["version_2_with_negative"]),
            "null_score_diff_threshold": float(settings["null_score_diff_threshold"]),
        }
        if args.null_score_diff_threshold is not None and not settings["version_2_with_negative"]:
            # v1.1 has no unanswerable questions: the threshold would be accepted and change nothing.
            raise ValueError(f"--null_score_diff_threshold only applies to SQuAD v2 runs (version_2_with_negative); "
                             f"{out_dir} is a v1.1 evaluation" + (f" (per {config_path})" if config_path else ""))
        outcome = decode_and_score(examples, feats, start, end, **settings)
    except (ValueError, argparse.ArgumentTypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(metrics_json(outcome.metrics))
    sys.stdout.flush()
    source = f" (defaults from {config_path})" if config_path else ""
    print(f"decode {outcome.timings['decode_s']:.3f} s, score {outcome.timings['score_s']:.3f} s: "
          f"{len(examples.ids)} examples, {feats.example_index.shape[0]} features; "
          + ", ".join(f"{k}={v}" for k, v in settings.items()) + source, file=sys.stderr)
    if args.write or args.out is not None:
        paths = write_eval_outputs(args.out or out_dir, outcome,
                                   version_2_with_negative=settings["version_2_with_negative"])
        print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
