"""The run section: keys that belong to the run as a whole, handed explicitly to the components that need them
(a component never reads another section)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from qa.keys import key, need


@dataclass(frozen=True)
class RunSettings:
    TITLE: ClassVar[str] = "run"
    output_dir: str = key("outputs/run", "Where checkpoints, metrics and the model go")
    # A fresh run refuses an output_dir holding another run's checkpoints or final model (qa/checkpoint/output_dir.py).
    overwrite_output_dir: bool = key(
        False, "Start fresh in an output_dir that holds a run: the old one is moved aside to "
               "<output_dir>.old-<UTC time> (nothing is deleted)")
    run_name: str | None = key(None, "Run name; null: output_dir's last part")
    seed: int = key(42, "Random seed")
    do_train: bool = key(True, "Train")
    do_eval: bool = key(True, "Evaluate on validation_file / the dataset's dev split")
    do_predict: bool = key(False, "Predict answers for test_file (answers optional): test_predictions.json")
    dry_run: bool = key(False, "Print the resolved plan and exit; load no weights")

    def check(self) -> None:
        need(self.do_train or self.do_eval or self.do_predict, "do_train",
             "nothing to do: do_train, do_eval and do_predict are all false")

    @property
    def resolved_run_name(self) -> str:
        return self.run_name or Path(self.output_dir).resolve().name
