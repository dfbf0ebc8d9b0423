"""Run safety at the edges, with real launchers, real signals and 2 CPU ranks (tiny model, few steps).

* a fresh run refuses another run's output_dir on every rank and writes nothing; --overwrite_output_dir moves
  it aside; a resume target past max_train_steps is refused naming both steps;
* SIGTERM to a plain ``accelerate launch`` checkpoints and leaves output_dir/PREEMPTED, but the launcher exits 1;
* the workers die within seconds of a SIGKILLed launcher and write nothing more;
* Ctrl-C (SIGINT to the process group, as a terminal sends it) under launch/local.sh: one checkpoint, one line
  naming it, exit 130; ZeRO-3's per-call torch deprecation warning is printed at most once per rank;
* ``accelerate launch --num_processes 2`` without --use_deepspeed/--multi_gpu (one process) is refused.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from fixtures import REPO, base_env, free_port, make_tiny_model

pytestmark = pytest.mark.slow

DEMO = str(REPO / "configs" / "demo_cpu.yaml")
# The machine running the suite is shared: deadlines are generous, and only bound a hang.
DEADLINE_S = 400


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _args(tiny: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", DEMO, "--model_name_or_path", str(tiny), "--output_dir", str(out), "--mixed_precision",
            "'no'", "--do_eval", "false", "--eval_before_training", "false", "--report_to", "none",
            "--dataloader_num_workers", "0", "--logging_steps", "1", *extra]


def _accelerate(*args: str, deepspeed: bool = True) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
            *(["--use_deepspeed"] if deepspeed else []), str(REPO / "train.py"), *args]


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    # Its own session, as a shell job would be: signals sent to its process group reach nothing else here.
    with log.open("w") as f:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)


def _wait_for(cond: Callable[[], bool], what: str, proc: subprocess.Popen | None = None, log: Path | None = None,
              timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before {what}:\n{tail}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{tail}")
        time.sleep(0.2)  # polling a condition with a deadline, not synchronising on time


def _finish(proc: subprocess.Popen, log: Path, timeout: float = DEADLINE_S) -> tuple[int, str]:
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return rc, log.read_text()


def _run(cmd: list[str], env: dict[str, str], log: Path) -> tuple[int, str]:
    return _finish(_start(cmd, env, log), log)


def _complete(out: Path, step: int) -> Callable[[], bool]:
    return lambda: (out / "checkpoints" / f"step_{step:07d}" / "COMPLETE").is_file()


def _tree(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*")}


def test_output_dir_guard_and_sigterm_under_plain_accelerate_launch(tiny: Path, tmp_path: Path) -> None:
    env = base_env(tmp_path)
    out = tmp_path / "run"
    # Another run's results: a complete checkpoint and a final model.
    (out / "checkpoints" / "step_0000007").mkdir(parents=True)
    (out / "checkpoints" / "step_0000007" / "COMPLETE").write_text("7\n")
    (out / "final").mkdir()
    (out / "final" / "config.json").write_text("{}")
    before = _tree(out)

    # 1. A fresh run is refused on both ranks, before it writes anything (not even its lock).
    rc, text = _run(_accelerate(*_args(tiny, out, "--max_train_steps", "4")), env, tmp_path / "refused.log")
    assert rc != 0
    errors = [line for line in text.splitlines() if line.startswith("config error: output_dir:")]
    assert 1 <= len(errors) <= 2, text[-3000:]  # one line, from each rank at most
    assert "--resume_from_checkpoint auto" in errors[0] and "--overwrite_output_dir" in errors[0]
    assert _tree(out) == before

    # 2. --overwrite_output_dir moves the old run aside and starts fresh. SIGTERM to the launcher itself:
    #    torchrun's agent passes it to the workers, which checkpoint and exit 42; the agent then re-raises the
    #    signal, so `accelerate launch` exits 1 and only output_dir/PREEMPTED says "requeue" (launch/ reads it).
    log = tmp_path / "overwrite.log"
    proc = _start(_accelerate(*_args(tiny, out, "--overwrite_output_dir", "--max_train_steps", "100000",
                                     "--checkpointing_steps", "2", "--save_total_limit", "10")), env, log)
    _wait_for(_complete(out, 2), "the first checkpoint", proc, log)
    proc.send_signal(signal.SIGTERM)
    rc, text = _finish(proc, log)
    assert rc == 1, text[-3000:]
    stopped = int((out / "PREEMPTED").read_text())
    assert stopped >= 2 and _complete(out, stopped)()
    moved = list(tmp_path.glob("run.old-*"))
    assert len(moved) == 1 and _tree(moved[0]) == before  # the earlier run, intact
    assert not (out / "final").exists()
    # The start-up timeline (launcher, imports, setup, data, model, first step), from rank 0.
    assert re.search(r"first step after \d+\.\ds \(launcher \d+\.\d, imports \d+\.\d, setup \d+\.\d, data \d+\.\d, "
                     r"model \d+\.\d, step \d+\.\d\)", text), text[-3000:]
    after = _tree(out)

    # 3. Resuming a checkpoint past max_train_steps is refused with both numbers.
    rc, text = _run(_accelerate(*_args(tiny, out, "--resume_from_checkpoint", "auto", "--max_train_steps", "1")),
                    env, tmp_path / "past.log")
    assert rc != 0
    assert f"is at step {stopped}, past max_train_steps 1" in text, text[-3000:]
    assert {k for k in _tree(out) if "checkpoints" in k} == {k for k in after if "checkpoints" in k}


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_workers_die_with_their_launcher(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    log = tmp_path / "run.log"
    proc = _start(_accelerate(*_args(tiny, out, "--max_train_steps", "100000", "--checkpointing_steps", "2",
                                     "--save_total_limit", "null")), base_env(tmp_path), log)
    workers: list[psutil.Process] = []
    try:
        _wait_for(_complete(out, 2), "the first checkpoint", proc, log)
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert len(workers) >= 2 and all(_alive(w) for w in workers)
        os.kill(proc.pid, signal.SIGKILL)  # the launcher only; the workers run in sessions of their own
        proc.wait(timeout=60)
        _wait_for(lambda: not any(_alive(w) for w in workers), "the workers to exit after their launcher",
                  log=log, timeout=60)
        # Nothing is left that could write: the checkpoints there now are all there will be.
        assert (out / "checkpoints" / "step_0000002" / "COMPLETE").is_file()
    finally:
        for w in [*workers, psutil.Process(proc.pid)] if proc.poll() is None else workers:
            if _alive(w):
                w.kill()


def test_ctrl_c_under_local_sh_checkpoints_and_exits_130(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    log = tmp_path / "local.log"
    env = {**base_env(tmp_path), "LAUNCH_DEVICE": "cpu", "MAIN_PROCESS_PORT": str(free_port()),
           "PYTHON": sys.executable}
    # ZeRO-3 on CPU: DeepSpeed calls torch's deprecated reduce_scatter_tensor on every step.
    args = _args(tiny, out, "--deepspeed", "configs/deepspeed/zero3.json", "--max_train_steps", "100000",
                 "--checkpointing_steps", "3")
    proc = _start([str(REPO / "launch" / "local.sh"), "2", *args[1:]], env, log)
    _wait_for(_complete(out, 3), "a few ZeRO-3 steps and a checkpoint", proc, log)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the script and the launcher get it
    rc, text = _finish(proc, log)
    assert rc == 130, text[-3000:]
    stops = re.findall(r"interrupted \(SIGINT\): stopped at step (\d+); checkpoint (\S+);", text)
    assert len(stops) == 1, text[-3000:]  # one line, from rank 0
    step, path = int(stops[0][0]), Path(stops[0][1])
    assert path == out / "checkpoints" / f"step_{step:07d}" and (path / "COMPLETE").is_file()
    assert not (out / "PREEMPTED").exists()  # Ctrl-C is not a preemption: nothing to requeue
    assert int((out / "INTERRUPTED").read_text()) == step  # what local.sh reads if its INT trap did not run
    assert "launch/local.sh: interrupted (launcher status 1)" in text  # `accelerate launch` itself exits 1
    # No worker traceback; the one traceback is the agent's SignalException, which accelerate does not catch.
    assert "KeyboardInterrupt" not in text
    assert text.count("Traceback (most recent call last)") == text.count("SignalException: Process") <= 1
    assert text.count("`torch.distributed.reduce_scatter_tensor` is deprecated") <= 2  # once per rank


def test_simple_launcher_with_two_processes_is_refused(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    rc, text = _run(_accelerate(*_args(tiny, out, "--max_train_steps", "2"), deepspeed=False), base_env(tmp_path),
                    tmp_path / "simple.log")
    assert rc != 0
    assert ("accelerate launch --num_processes 2 --use_deepspeed --deepspeed_config_file "
            "configs/deepspeed/zero2.json") in text, text[-3000:]
    assert "returned non-zero exit status 2" in text  # train.py's 2, as accelerate's simple launcher reports it
    assert not out.exists()
