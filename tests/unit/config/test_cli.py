"""train.py's command line (HfArgumentParser) over a YAML file: help, switches, null, lists, typos, paths."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from configs import from_mapping as from_dict
from fixtures import make_tiny_model
from qa.config import replace_keys, save_config
from qa.config.sections import SECTIONS
from qa.errors import ConfigError
from qa.preflight.config_checks import load_and_check

REPO = Path(__file__).resolve().parents[3]
TRAIN = str(REPO / "data" / "demo" / "train.json")
DEV = str(REPO / "data" / "demo" / "dev.json")
ZERO2 = REPO / "configs" / "deepspeed" / "zero2.json"
ALL_FIELDS = [f for cls in SECTIONS.values() for f in dataclasses.fields(cls)]
FIELDS = [f.name for f in ALL_FIELDS]


def _base(*extra: str) -> list[str]:
    return ["--train_file", TRAIN, "--validation_file", DEV, "--deepspeed", "null", *extra]


def _yaml(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(f"train_file: {TRAIN}\nvalidation_file: {DEV}\n" + text)
    return path


def test_help_lists_every_key_with_type_default_and_description() -> None:
    env = {**os.environ, "COLUMNS": "400"}  # no wrapping: textwrap may break "SQuAD-format" at the hyphen
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "--help"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())  # argparse wraps lines
    for f in ALL_FIELDS:
        help_text = " ".join(f.metadata["help"].split())
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        # "--key TYPE description (default: value)", one entry per key
        assert re.search(rf"--{f.name} \S*[A-Z{{]\S* (?:\[\S+ \.\.\.\] )?{re.escape(help_text)} "
                         rf"\(default: {re.escape(str(default))}\)", out), f.name
    for typed in ("--max_train_steps INT|null", "--learning_rate FLOAT", "--dry_run [BOOL]",
                  "--checkpointing_steps INT|epoch|null", "--mixed_precision {auto,no,fp16,bf16}",
                  "--wandb_tags STR [STR ...]", "--config FILE.yaml", "--with_tracking [BOOL]"):
        assert typed in out
    for section in SECTIONS.values():  # one group per section, titled as the section says
        assert f"\n{section.TITLE}:\n" in proc.stdout


def test_short_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        load_and_check(["-h"])
    assert exc.value.code == 0
    assert "--learning_rate FLOAT" in capsys.readouterr().out


def test_parsing_leaves_the_schema_alone() -> None:
    before = {f.name: f.type for f in ALL_FIELDS}
    load_and_check(_base())
    assert {f.name: f.type for f in ALL_FIELDS} == before


def test_bare_switch_is_true_and_flags_take_false(tmp_path: Path) -> None:
    cfg = load_and_check(_base("--dry_run", "--do_predict", "--test_file", DEV, "--overwrite_output_dir"))
    assert cfg.run.dry_run is True and cfg.run.do_predict is True and cfg.run.overwrite_output_dir is True
    assert load_and_check(_base("--do_eval", "false", "--group_by_length", "no")).run.do_eval is False
    assert load_and_check(_base("--no_group_by_length")).batch.group_by_length is False
    assert load_and_check(_base("--dry-run")).run.dry_run is True  # HfArgumentParser's dashed spelling
    y = _yaml(tmp_path, "dry_run: true\ndo_eval: false\ndeepspeed: null\n")
    cfg = load_and_check(["--config", str(y), "--do_eval"])
    assert cfg.run.dry_run is True and cfg.run.do_eval is True  # the command line wins


def test_null_and_none_clear_optional_keys(tmp_path: Path) -> None:
    cfg = load_and_check(_base("--max_train_steps", "null", "--save_total_limit", "none", "--s3_sse", "None",
                            "--attn_implementation", "~"))
    assert (cfg.schedule.max_train_steps, cfg.checkpoint.save_total_limit, cfg.storage.s3_sse, cfg.model.attn_implementation) == (None,) * 4
    y = _yaml(tmp_path, "save_total_limit: null\nattn_implementation: none\ndeepspeed: ~\n")
    cfg = load_and_check(["--config", str(y)])
    assert (cfg.checkpoint.save_total_limit, cfg.model.attn_implementation, cfg.distributed.deepspeed) == (None, None, None)
    assert load_and_check(_base("--report_to", "none")).tracking.report_to == "none"  # a choice, not null
    assert load_and_check(_base("--run_name", "'null'")).run.run_name == "null"  # quoted: literal
    with pytest.raises(ConfigError, match=r"^--output_dir: cannot be null"):
        load_and_check(_base("--output_dir", "null"))
    with pytest.raises(ConfigError, match=r"run.yaml: learning_rate: cannot be null"):
        load_and_check(["--config", str(_yaml(tmp_path, "learning_rate: null\n"))])


def test_checkpointing_steps_is_an_int_epoch_or_null(tmp_path: Path) -> None:
    got = load_and_check(_base("--checkpointing_steps", "250")).schedule.checkpointing_steps
    assert got == 250 and type(got) is int
    assert load_and_check(_base("--checkpointing_steps", "epoch")).schedule.checkpointing_steps == "epoch"
    assert load_and_check(_base("--checkpointing_steps", "null")).schedule.checkpointing_steps is None
    assert load_and_check(["--config", str(_yaml(tmp_path, "deepspeed: null\ncheckpointing_steps: 40\n"))]
                       ).schedule.checkpointing_steps == 40
    with pytest.raises(ConfigError, match=r"^--checkpointing_steps: expected an integer, 'epoch' or null, "
                                          r"got 'often'$"):
        load_and_check(_base("--checkpointing_steps", "often"))
    with pytest.raises(ConfigError, match=r"checkpointing_steps: must be >= 1"):
        load_and_check(_base("--checkpointing_steps", "0"))


def test_lists_from_yaml_and_command_line(tmp_path: Path) -> None:
    assert load_and_check(_base("--wandb_tags", "a", "b")).tracking.wandb_tags == ["a", "b"]
    assert load_and_check(_base("--wandb_tags", "a,b")).tracking.wandb_tags == ["a", "b"]
    y = _yaml(tmp_path, "deepspeed: null\nwandb_tags: [x, y]\n")
    assert load_and_check(["--config", str(y)]).tracking.wandb_tags == ["x", "y"]
    assert load_and_check(["--config", str(y), "--wandb_tags", "z"]).tracking.wandb_tags == ["z"]
    with pytest.raises(ConfigError, match=r"run.yaml: learning_rate: expected a number, got \[1, 2\]"):
        load_and_check(["--config", str(_yaml(tmp_path, "learning_rate: [1, 2]\n"))])


def test_unknown_keys_suggest_the_close_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^command line: unknown key 'lerning_rate'; did you mean "
                                          r"'learning_rate'\?$"):
        load_and_check(_base("--lerning_rate", "1e-4"))
    with pytest.raises(ConfigError, match=r"unknown key 'lerning_rate'; did you mean 'learning_rate'\?"):
        load_and_check(_base("--lerning-rate=1e-4"))
    y = _yaml(tmp_path, "lerning_rate: 1.0e-4\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(y))}: unknown key 'lerning_rate'; did you mean "
                                          r"'learning_rate'\?$"):
        load_and_check(["--config", str(y)])
    with pytest.raises(ConfigError, match=r"unknown key 'zzz'; see train.py --help"):
        load_and_check(_base("--zzz", "1"))
    with pytest.raises(ConfigError, match=r"unexpected argument 'stray'"):
        load_and_check(_base("stray"))


def test_config_given_twice_is_refused(tmp_path: Path) -> None:
    y = _yaml(tmp_path, "deepspeed: null\n")
    with pytest.raises(ConfigError, match=r"^--config given 2 times"):
        load_and_check(["--config", str(y), "--learning_rate", "1e-4", f"--config={y}"])


def test_yaml_type_errors_name_the_file_and_the_key(tmp_path: Path) -> None:
    cases = {
        "per_device_train_batch_size: abc\n": "per_device_train_batch_size: expected an integer, got 'abc'",
        "max_train_steps: 7.5\n": "max_train_steps: expected an integer, got '7.5'",
        "mixed_precision: fp8\n": "mixed_precision: expected one of auto, no, fp16, bf16, got 'fp8'",
        "do_train: maybe\n": "do_train: expected true or false, got 'maybe'",
        "output_dir: no\n": "output_dir: expected a string, got false (YAML reads",
        "lr_scheduler_type: exponential\n": "lr_scheduler_type: expected one of linear, cosine,",
    }
    for text, message in cases.items():
        y = _yaml(tmp_path, text)
        with pytest.raises(ConfigError) as exc:
            load_and_check(["--config", str(y)])
        assert str(exc.value).startswith(f"{y}: {message}"), str(exc.value)
    with pytest.raises(ConfigError, match=r"^x.yaml: num_train_epochs: expected a number, got 'many'$"):
        from_dict({"num_train_epochs": "many"}, source="x.yaml")


def test_argparse_errors_are_one_config_error_line(capsys: pytest.CaptureFixture[str],
                                                    train_main: Callable[[list[str]], int]) -> None:
    for argv, message in ((["--max_train_steps"], "--max_train_steps: expected one argument"),
                          (["--mixed_precision", "fp8"], "--mixed_precision: expected one of auto, no, fp16, "
                                                         "bf16, got 'fp8'"),
                          (["--learning_rat", "1"], "unknown key 'learning_rat'; did you mean 'learning_rate'?"),
                          (["--config"], "--config: expected one argument")):
        assert train_main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("config error: ") and message in err and err.count("\n") == 1, err
        assert "usage:" not in err


def test_negative_numbers_are_values() -> None:
    assert load_and_check(_base("--null_score_diff_threshold", "-1e-3")).eval.null_score_diff_threshold == -1e-3
    assert load_and_check(_base("--null_score_diff_threshold", "-2")).eval.null_score_diff_threshold == -2.0
    with pytest.raises(ConfigError, match=r"learning_rate: must not be negative"):
        load_and_check(_base("--learning_rate", "-1e-5"))


def test_quoted_values_and_yaml_no_stay_strings(tmp_path: Path) -> None:
    assert load_and_check(_base("--mixed_precision", "'no'")).distributed.mixed_precision == "no"
    assert load_and_check(["--config", str(_yaml(tmp_path, "deepspeed: null\nmixed_precision: no\n"))]
                       ).distributed.mixed_precision == "no"


def test_with_tracking_is_report_to_wandb(tmp_path: Path) -> None:
    y = _yaml(tmp_path, "deepspeed: null\nreport_to: none\n")
    assert load_and_check(["--config", str(y)]).tracking.report_to == "none"
    assert load_and_check(["--config", str(y), "--with_tracking"]).tracking.report_to == "wandb"
    assert load_and_check(_base("--with_tracking", "false")).tracking.report_to == "none"
    assert load_and_check(["--config", str(_yaml(tmp_path, "deepspeed: null\nwith_tracking: true\n"))]
                       ).tracking.report_to == "wandb"
    both = _yaml(tmp_path, "with_tracking: true\nreport_to: none\n")
    with pytest.raises(ConfigError, match=r"with_tracking and report_to: none disagree"):
        load_and_check(["--config", str(both)])


def test_predict_keys_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"^test_file: set test_file"):
        load_and_check(_base("--do_predict"))
    with pytest.raises(ConfigError, match=r"^test_file: file not found: /nonexistent/test.json"):
        load_and_check(_base("--do_predict", "--test_file", "/nonexistent/test.json"))
    assert load_and_check(_base("--test_file", "/nonexistent/test.json")).data.test_file  # unused without do_predict
    with pytest.raises(ConfigError, match=r"^max_predict_samples: must be >= 1"):
        load_and_check(_base("--do_predict", "--test_file", DEV, "--max_predict_samples", "0"))
    cfg = load_and_check(_base("--do_predict", "--test_file", DEV, "--max_predict_samples", "5"))
    assert (cfg.data.max_predict_samples, cfg.run.overwrite_output_dir) == (5, False)


def test_deepspeed_path_does_not_depend_on_the_working_directory(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_and_check(["--train_file", TRAIN, "--validation_file", DEV]).distributed.deepspeed == str(ZERO2)  # default
    cfg = load_and_check(["--config", str(REPO / "configs" / "demo_cpu.yaml"), "--train_file", TRAIN,
                       "--validation_file", DEV])
    assert cfg.distributed.deepspeed == str(ZERO2)
    # A YAML elsewhere: relative to its own directory (or one above it) ...
    project = tmp_path / "project"
    (project / "ds").mkdir(parents=True)
    (project / "ds" / "mine.json").write_text(ZERO2.read_text())
    (project / "configs").mkdir()
    y = _yaml(project / "configs", "deepspeed: ds/mine.json\n")
    assert load_and_check(["--config", str(y)]).distributed.deepspeed == str(project / "ds" / "mine.json")
    # ... but a path that exists from the working directory is taken as given.
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "mine.json").write_text(ZERO2.read_text())
    assert load_and_check(["--config", str(y)]).distributed.deepspeed == "ds/mine.json"
    # Data paths stay the user's, relative to where they run.
    # A relative path that is not found names the directory it was looked for in.
    with pytest.raises(ConfigError, match=rf"^train_file: file not found: data/demo/train.json \(relative paths are "
                                          rf"read from {re.escape(str(Path.cwd()))}\)$"):
        load_and_check(["--config", str(REPO / "configs" / "demo_cpu.yaml")])
    with pytest.raises(ConfigError, match=rf"^deepspeed: file not found: no/such.json \(relative paths are read "
                                          rf"from {re.escape(str(Path.cwd()))}, then the config file's directory "
                                          r"and those above it, then the repository\)$"):
        load_and_check(_base("--deepspeed", "no/such.json"))


@pytest.mark.slow  # one process, but it tokenizes the demo data: ~15 s
def test_dry_run_from_another_directory(tmp_path: Path, train_main: Callable[[list[str]], int],
                                       capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = make_tiny_model(tmp_path / "tiny")
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    rc = train_main(["--config", str(REPO / "configs" / "demo_cpu.yaml"), "--dry_run",
                     "--model_name_or_path", str(tiny), "--train_file", TRAIN, "--validation_file", DEV,
                     "--output_dir", str(tmp_path / "out"), "--mixed_precision", "no", "--report_to", "none",
                     "--num_warmup_steps", "0", "--warmup_ratio", "0.1", "--num_train_epochs", "4"])
    proc = subprocess.CompletedProcess([], rc, *capfd.readouterr())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"DeepSpeed ZeRO-2 from {ZERO2}" in proc.stdout
    # The plan's warmup comes from warmup_ratio through qa.model.optim.warmup_steps: 124 steps x 0.1, rounded up.
    assert "optimizer steps      124 over 4 epoch(s)" in proc.stdout
    assert "13 warmup step(s) (10.5% of the run)" in proc.stdout
    assert not (tmp_path / "out").exists() and not any(work.iterdir())


def test_save_config_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # See test_save_config_keeps_paths_under_pwd: the shell's PWD is scrubbed from saved paths.
    monkeypatch.delenv("PWD", raising=False)
    monkeypatch.delenv("OLDPWD", raising=False)
    cfg = load_and_check(["--train_file", TRAIN, "--validation_file", DEV, "--checkpointing_steps", "7",
                       "--mixed_precision", "no", "--wandb_tags", "a", "b", "--s3_sse", "AES256",
                       "--s3_uri", "s3://bucket/prefix", "--warmup_ratio", "0.1", "--lr_scheduler_type", "cosine",
                       "--learning_rate", "5e-5", "--max_train_steps", "9", "--report_to", "none",
                       "--run_name", "r", "--num_train_epochs", "1.5", "--eval_strategy", "steps",
                       "--eval_steps", "3"])
    saved = tmp_path / "run_config.yaml"
    save_config(cfg, saved)
    assert load_and_check(["--config", str(saved)]) == cfg
    epoch = replace_keys(cfg, checkpointing_steps="epoch", deepspeed=None, do_eval=False)
    save_config(epoch, saved)
    assert load_and_check(["--config", str(saved)]) == epoch


def test_save_config_keeps_paths_under_pwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PWD", str(REPO))  # what a shell sets when train.py is started from the repository
    cfg = load_and_check(_base())
    save_config(cfg, tmp_path / "run_config.yaml")
    assert load_and_check(["--config", str(tmp_path / "run_config.yaml")]) == cfg


def test_help_says_overwrite_output_dir_moves_the_old_run_aside() -> None:
    from qa.config.load import ConfigParser

    text = " ".join(ConfigParser().format_help().split())
    assert re.search(r"--overwrite_output_dir \[BOOL\] Start fresh in an output_dir that holds a run: the old one is "
                     r"moved aside to <output_dir>\.old-<UTC time> \(nothing is deleted\)", text), text
