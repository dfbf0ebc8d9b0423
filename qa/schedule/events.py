"""Which steps log, evaluate and checkpoint: pure functions of the step counters and the schedule section."""

from __future__ import annotations

from qa.schedule.settings import ScheduleSettings

LOG, EVAL, CHECKPOINT = "log", "eval", "checkpoint"


def step_events(step: int, total: int, schedule: ScheduleSettings, *, do_eval: bool) -> set[str]:
    """What happens after optimizer step ``step`` of ``total``: log, evaluate (steps strategy), checkpoint.

    The end of training is always logged; its evaluation is the final one (train.py), so no step
    evaluation runs there. Epoch ends: :func:`epoch_events`.
    """
    events = set()
    if step % schedule.logging_steps == 0 or step == total:
        events.add(LOG)
    if (do_eval and schedule.eval_strategy == "steps" and schedule.eval_steps
            and step % schedule.eval_steps == 0 and step < total):
        events.add(EVAL)
    if isinstance(schedule.checkpointing_steps, int) and step % schedule.checkpointing_steps == 0:
        events.add(CHECKPOINT)
    return events


def epoch_events(epoch: int, num_epochs: int, schedule: ScheduleSettings, *, do_eval: bool) -> set[str]:
    """What happens when epoch ``epoch`` (counted from 1) of ``num_epochs`` has run to its end; the last epoch's
    evaluation is the final one (train.py)."""
    events = set()
    if schedule.checkpointing_steps == "epoch":
        events.add(CHECKPOINT)
    if do_eval and schedule.eval_strategy == "epoch" and epoch < num_epochs:
        events.add(EVAL)
    return events
