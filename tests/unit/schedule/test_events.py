"""When a step or an epoch end logs, evaluates and checkpoints; how many steps a run makes."""

from __future__ import annotations

from dataclasses import replace

from qa.schedule.events import CHECKPOINT, EVAL, LOG, epoch_events, step_events
from qa.schedule.settings import ScheduleSettings

BASE = ScheduleSettings(num_train_epochs=2.0, logging_steps=10, eval_strategy="epoch")


def _schedule(settings: ScheduleSettings, total: int, do_eval: bool = True) -> dict[str, list[int]]:
    got: dict[str, list[int]] = {LOG: [], EVAL: [], CHECKPOINT: []}
    for step in range(1, total + 1):
        for event in step_events(step, total, settings, do_eval=do_eval):
            got[event].append(step)
    return got


def test_logging_every_n_and_always_at_the_end() -> None:
    assert _schedule(BASE, 25)[LOG] == [10, 20, 25]


def test_step_evaluation_never_at_the_last_step_and_only_with_steps_strategy() -> None:
    steps = replace(BASE, eval_strategy="steps", eval_steps=10)
    assert _schedule(steps, 30)[EVAL] == [10, 20]  # 30 is the final evaluation, done once by train.py
    assert _schedule(BASE, 30)[EVAL] == []
    assert _schedule(steps, 30, do_eval=False)[EVAL] == []


def test_checkpoints_by_step_count_only_when_an_int() -> None:
    assert _schedule(replace(BASE, checkpointing_steps=7), 21)[CHECKPOINT] == [7, 14, 21]
    assert _schedule(replace(BASE, checkpointing_steps="epoch"), 21)[CHECKPOINT] == []


def test_epoch_ends_checkpoint_with_epoch_strategy_and_evaluate_all_but_the_last() -> None:
    assert epoch_events(1, 3, BASE, do_eval=True) == {EVAL}
    assert epoch_events(3, 3, BASE, do_eval=True) == set()  # the final evaluation is train.py's
    assert epoch_events(1, 3, replace(BASE, checkpointing_steps="epoch"), do_eval=False) == {CHECKPOINT}
    assert epoch_events(1, 3, replace(BASE, eval_strategy="end"), do_eval=True) == set()


def test_total_steps_max_train_steps_wins_and_epochs_round_up() -> None:
    loop = replace(BASE, num_train_epochs=1.5)
    assert loop.total_steps(steps_per_epoch=5) == (8, 2)
    assert replace(loop, max_train_steps=12).total_steps(steps_per_epoch=5) == (12, 3)
