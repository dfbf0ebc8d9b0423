"""output_dir ownership: another run's results are refused, overwrite moves them aside, a live run's lock holds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qa.checkpoint import output_dir as od
from qa.config import Config, make_config
from qa.errors import ConfigError
from qa.preflight.config_checks import output_dir_use


def _cfg(out: Path, **kw: object) -> Config:
    return make_config(output_dir=str(out), train_file="t.json", validation_file="v.json", **kw)


def _previous_run(out: Path) -> Path:
    (out / "checkpoints" / "step_0000004").mkdir(parents=True)
    (out / "checkpoints" / "step_0000004" / "COMPLETE").write_text("4\n")
    (out / "checkpoints" / "step_0000004" / "trainer_state.json").write_text('{"global_step": 4}')
    (out / "final").mkdir()
    (out / "final" / "model.safetensors").write_text("weights")
    return out


@pytest.fixture(autouse=True)
def _release_locks(tmp_path: Path):
    yield
    for path in list(od._held):
        od.release(path)


def test_fresh_run_into_another_runs_dir_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    out = _previous_run(tmp_path / "run")
    before = sorted(str(p) for p in out.rglob("*"))
    with pytest.raises(ConfigError) as e:
        od.claim(output_dir_use(_cfg(out)))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("output_dir:")
    assert "checkpoints/step_0000004" in msg and "final" in msg
    assert "--resume_from_checkpoint auto" in msg and "--overwrite_output_dir" in msg
    assert sorted(str(p) for p in out.rglob("*")) == before  # not even a lock file


@pytest.mark.parametrize("kw", [{"resume_from_checkpoint": "auto"}, {"do_train": False}])
def test_resuming_or_evaluating_may_use_the_dir(tmp_path: Path, kw: dict) -> None:
    out = _previous_run(tmp_path / "run")
    assert od.claim(output_dir_use(_cfg(out, **kw))) is None
    assert (out / "final" / "model.safetensors").is_file()
    pid, host = (out / od.LOCK_FILE).read_text().split()
    assert int(pid) == os.getpid() and host == socket.gethostname()


def test_an_empty_or_new_dir_is_fine(tmp_path: Path) -> None:
    assert od.claim(output_dir_use(_cfg(tmp_path / "new" / "run"))) is None
    assert (tmp_path / "new" / "run" / od.LOCK_FILE).is_file()


def test_overwrite_moves_the_earlier_run_aside(tmp_path: Path) -> None:
    out = _previous_run(tmp_path / "run")
    (out / "metrics.jsonl").write_text("{}\n")
    moved = od.claim(output_dir_use(_cfg(out, overwrite_output_dir=True)))
    assert moved is not None and moved.parent == tmp_path and moved.name.startswith("run.old-")
    assert (moved / "final" / "model.safetensors").read_text() == "weights"
    assert (moved / "checkpoints" / "step_0000004" / "COMPLETE").is_file()
    assert sorted(p.name for p in out.iterdir()) == [od.LOCK_FILE]  # a clean start
    od.release(out)
    # Twice in the same second: a second, distinct name; nothing is ever replaced.
    (out / "final").mkdir()
    again = od.claim(output_dir_use(_cfg(out, overwrite_output_dir=True)))
    assert again is not None and again != moved and (again / "final").is_dir() and moved.is_dir()


def test_overwrite_with_resume_or_a_model_inside_is_refused(tmp_path: Path) -> None:
    out = _previous_run(tmp_path / "run")
    with pytest.raises(ConfigError, match="overwrite_output_dir: cannot be combined with resume_from_checkpoint"):
        od.claim(output_dir_use(_cfg(out, overwrite_output_dir=True, resume_from_checkpoint="auto")))
    with pytest.raises(ConfigError, match="model_name_or_path .* lies inside output_dir"):
        od.claim(output_dir_use(_cfg(out, overwrite_output_dir=True, model_name_or_path=str(out / "final"))))
    assert (out / "final").is_dir() and not (out / od.LOCK_FILE).exists()


def test_resume_target_past_max_train_steps_names_both_steps(tmp_path: Path) -> None:
    ckpt = _previous_run(tmp_path / "run") / "checkpoints" / "step_0000004"
    with pytest.raises(ConfigError, match=r"is at step 4, past max_train_steps 3; .*--max_train_steps"):
        od.check_resume_step(_cfg(tmp_path / "run", max_train_steps=3).schedule.max_train_steps, ckpt)
    od.check_resume_step(_cfg(tmp_path / "run", max_train_steps=4).schedule.max_train_steps, ckpt)  # the last step: eval and export
    od.check_resume_step(_cfg(tmp_path / "run").schedule.max_train_steps, ckpt)  # epochs: no fixed end to compare
    od.check_resume_step(_cfg(tmp_path / "run", max_train_steps=1).schedule.max_train_steps, None)


def _hold_lock(out: Path) -> subprocess.Popen:
    """Another process that claims ``out`` and keeps it until its stdin closes."""
    script = textwrap.dedent(f"""
        import sys
        from qa.config import make_config
        from qa.checkpoint.output_dir import claim
        from qa.preflight.config_checks import output_dir_use
        claim(output_dir_use(make_config(output_dir={str(out)!r}, train_file="t", validation_file="v")))
        print("locked", flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_live_run_holds_the_dir_and_a_dead_ones_lock_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "run"
    holder = _hold_lock(out)
    try:
        for cfg in (_cfg(out), _cfg(out, resume_from_checkpoint="auto"), _cfg(out, overwrite_output_dir=True)):
            with pytest.raises(ConfigError) as e:
                od.claim(output_dir_use(cfg))
            assert f"in use by a live run (pid {holder.pid} on host {socket.gethostname()}" in str(e.value)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    # The holder is gone: its lock went with it, the stale pid in the file does not matter.
    assert (out / od.LOCK_FILE).read_text().split()[0] == str(holder.pid)
    od.claim(output_dir_use(_cfg(out)))
    assert (out / od.LOCK_FILE).read_text().split()[0] == str(os.getpid())


def test_holder_text() -> None:
    assert od._describe("123 node7") == "pid 123 on host node7"
    assert od._describe("") == "another process"


def test_launch_scripts_refuse_another_runs_dir_before_launching(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from fixtures import REPO
    from qa.preflight.launch import main as launch_info

    monkeypatch.chdir(REPO)
    out = _previous_run(tmp_path / "run")
    assert launch_info(["launch-info", "2", "0", "--config", "configs/demo_cpu.yaml", "--output_dir", str(out)]) == 2
    assert "already holds another run" in capsys.readouterr().err
    assert launch_info(["launch-info", "2", "0", "--config", "configs/demo_cpu.yaml", "--output_dir", str(out),
                        "--resume_from_checkpoint", "auto"]) == 0
