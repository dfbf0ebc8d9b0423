"""Fine-tune an extractive QA model on SQuAD-format data.

    accelerate launch train.py --config configs/squad_v1_distilbert.yaml [--key value ...]

Read top to bottom: each line is one step of the run; the steps live in ``qa/``.
"""

# ruff: noqa: E402
# (prepare_process() must run before torch, transformers and DeepSpeed are imported)
from __future__ import annotations

import sys

from qa.trainer import startup

startup.prepare_process()  # dies with its launcher, DeepSpeed op cache, repeated warnings once, start clock

from qa.config import load_config
from qa.errors import ConfigError
from qa.preflight.checks import check_launch
from qa.preflight.report import describe_plan
from qa.trainer import evaluation, loop
from qa.trainer import setup as steps


def main(argv: list[str] | None = None) -> int:
    startup.mark("imports")
    try:
        cfg = load_config(argv)  # every key checked before any model or GPU work
        check_launch(cfg)  # this launch can run this config (batch, precision, ZeRO)
        if cfg.dry_run:
            print(describe_plan(cfg) or "", end="")  # the resolved plan (rank 0), no weights loaded
            return 0
        run = steps.start(cfg)  # accelerator, output_dir claim, S3 check, checkpoint to resume, tracker
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    startup.mark("setup")
    steps.prepare_data(run)  # examples -> cached features (main process first)
    startup.mark("data")
    steps.build_model(run)  # model, optimizer, schedule, loader through accelerate/DeepSpeed
    steps.resume(run)  # model/optimizer/scheduler/RNG/data position, if resuming
    startup.mark("model")
    if cfg.do_eval and cfg.eval_before_training:
        evaluation.evaluate(run, tag="eval_before")  # the baseline the fine-tuning must beat
    outcome = loop.train(run) if cfg.do_train else loop.COMPLETED
    if outcome in (loop.PREEMPTED, loop.INTERRUPTED):
        steps.finish(run, outcome)  # upload finished within the grace period
        return run.preemption.exit_code  # EXIT_PREEMPTED (launch/ scripts requeue), or 130 after Ctrl-C
    if cfg.do_eval:
        evaluation.evaluate(run, tag="eval")  # gather logits, decode and score on rank 0
    if cfg.do_train:
        steps.export(run)  # save_pretrained + tokenizer to output_dir/final (and S3)
    steps.finish(run, outcome)  # wait for uploads, summary, close tracker
    return 0


if __name__ == "__main__":
    sys.exit(main())
