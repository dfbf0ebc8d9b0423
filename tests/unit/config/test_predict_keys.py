"""do_predict / test_file / max_predict_samples: checked at start-up, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from qa.errors import ConfigError
from qa.preflight.config_checks import load_and_check

DEV = str(Path(__file__).resolve().parents[3] / "data" / "demo" / "dev.json")
ONLY_PREDICT = ["--do_train", "false", "--do_eval", "false", "--deepspeed", "null"]


def test_predict_alone_is_something_to_do() -> None:
    cfg = load_and_check([*ONLY_PREDICT, "--do_predict", "--test_file", DEV, "--max_predict_samples", "5"])
    assert (cfg.run.do_predict, cfg.data.test_file, cfg.data.max_predict_samples) == (True, DEV, 5)
    assert load_and_check(["--deepspeed", "null", "--validation_file", DEV, "--do_train", "false"]).run.do_predict is False


@pytest.mark.parametrize("args, key", [
    (["--do_predict"], "test_file: set test_file"),
    (["--do_predict", "--test_file", "/nonexistent/test.json"], "test_file: file not found"),
    (["--do_predict", "--test_file", DEV, "--max_predict_samples", "0"], "max_predict_samples"),
    ([], "nothing to do"),
])
def test_bad_predict_settings_name_the_key(args: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_and_check([*ONLY_PREDICT, *args])


def test_test_file_is_not_checked_when_not_predicting() -> None:
    cfg = load_and_check([*ONLY_PREDICT[:2], "--validation_file", DEV, "--deepspeed", "null", "--test_file", "/nope"])
    assert not cfg.run.do_predict
