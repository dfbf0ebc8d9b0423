"""Fine-tune an extractive QA model on SQuAD-format data.

    accelerate launch train.py --config configs/squad_v1_distilbert.yaml [--key value ...]

Read top to bottom: each line is one step of the run; the steps live in ``qa/``. A user error (config,
data, resume target, storage) on any rank ends every rank with one line and exit status 2.
"""

# ruff: noqa: E402
# (prepare_process() must run before torch, transformers and DeepSpeed are imported)
from __future__ import annotations

import sys
from pathlib import Path

from qa.lifecycle import startup

startup.prepare_process()  # dies with its launcher, DeepSpeed op cache, repeated warnings once, start clock

from qa.config import Config
from qa.errors import EXIT_USER_ERROR, UserError
from qa.preflight.checks import check_launch
from qa.preflight.config_checks import load_and_check
from qa.preflight.report import describe_plan
from qa.trainer import inputs, prediction, setup
from qa.trainer.evaluation import evaluate
from qa.trainer.loop import COMPLETED, INTERRUPTED, PREEMPTED, Trainer


def run(cfg: Config) -> int:
    accelerator = setup.connect(cfg)  # accelerator; data files, model config and tokenizer checked
    store = setup.open_storage(cfg.storage, accelerator)  # S3 or shared directory, checked on every node
    startup.mark("setup")
    data = inputs.prepare_data(cfg, accelerator)  # examples -> cached windows (train, eval, test)
    startup.mark("data")
    # Every input check is done: nothing was written before this line.
    steps = setup.planned_steps(cfg, accelerator, data)
    session = setup.start(cfg, accelerator, store, steps)  # output_dir claim, storage, resume, tracker
    if session is None:
        return 0  # resumed a run that had already finished: said so, changed nothing
    weights = setup.load_weights(cfg.model, session, cfg.run.output_dir)  # unreadable: undone, one line
    model = setup.build_model(cfg, session, data, weights)  # optimizer, schedule, loader via accelerate/DeepSpeed
    setup.resume(cfg, session)  # model/optimizer/scheduler/RNG/data position, if resuming
    startup.mark("model")
    if data.eval is not None and cfg.eval.eval_before_training:
        evaluate(session, model, data.eval, cfg, tag="eval_before")  # the baseline to beat
    outcome = COMPLETED
    if cfg.run.do_train:
        outcome = Trainer(session, model, data, cfg).train()
    if outcome in (PREEMPTED, INTERRUPTED):
        setup.finish(cfg.storage, session, outcome)  # upload finished within the grace period
        return session.preemption.exit_code  # EXIT_PREEMPTED (launch/ scripts requeue), or 130 after Ctrl-C
    if data.eval is not None:
        evaluate(session, model, data.eval, cfg, tag="eval")  # gather, decode and score on rank 0
    if data.test is not None:
        prediction.predict(session, model, data.test, cfg)  # test_predictions.json (+ scores if labeled)
    if cfg.run.do_train:
        setup.export(Path(cfg.run.output_dir), session, model, data)  # save_pretrained + tokenizer -> final/
    setup.finish(cfg.storage, session, outcome)  # wait for uploads, summary, close tracker
    return 0


def main(argv: list[str] | None = None) -> int:
    startup.imports_done()  # the collector no longer walks what the imports made
    try:
        cfg = load_and_check(argv)  # every key checked before any model or GPU work
        check_launch(cfg)  # this launch can run this config (batch, precision, ZeRO)
        if cfg.run.dry_run:
            print(describe_plan(cfg) or "", end="")  # the resolved plan (rank 0), no weights loaded
            return 0
        return run(cfg)
    except UserError as e:
        # One line, no traceback: the message names the key, file, row or id to fix. Under a launcher every rank
        # reads the same config, so only each node's first rank says it (one line on one machine).
        if not getattr(e, "reported_by_rank_zero", False) and startup.speaks_for_node():
            print(f"{type(e).__name__.removesuffix('Error').lower() or 'input'} error: {e}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    status = main()
    startup.before_exit()  # no last walk of the whole heap: 2-3 s per rank
    sys.exit(status)
