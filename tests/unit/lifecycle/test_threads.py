"""Threads per CPU rank: the share of the cores available to the process, the user's OMP_NUM_THREADS winning, and
the launchers' own default (torchrun's 1) told apart from the user's value, under real launchers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fixtures import free_port
from qa.lifecycle.threads import choose_threads, cores_available, launcher_environment, user_thread_setting


@pytest.mark.parametrize(("cores", "ranks", "user", "threads"), [
    (16, 2, None, 8),     # a workstation: each of 2 ranks gets half, not torchrun's 1
    (2, 2, None, 1),
    (3, 2, None, 1),      # rounded down: never more threads than cores
    (1, 4, None, 1),      # never 0
    (16, 1, None, 16),
    (16, 2, "3", 3),      # the user's value wins
    (2, 2, "8", 8),       # ... even oversubscribed: the user asked for it
    (16, 2, "0", 8),      # not a thread count: ignored
    (16, 2, "many", 8),
])
def test_share_of_the_cores_unless_the_user_said(cores: int, ranks: int, user: str | None, threads: int) -> None:
    choice = choose_threads(cores=cores, local_world_size=ranks, user_value=user)
    assert choice.threads == threads
    assert ("from the user" in choice.reason) is (user in ("3", "8"))
    assert str(threads) in choice.describe()


def test_whose_value_it_is() -> None:
    worker = {"OMP_NUM_THREADS": "1"}  # what torchrun gives every worker when the user set nothing
    assert user_thread_setting(worker, True, {}) is None
    assert user_thread_setting(worker, True, {"OMP_NUM_THREADS": "1"}) == "1"  # the user's own 1 stays 1
    assert user_thread_setting(worker, False, None) == "1"  # no launcher: our environment is the user's
    # accelerate exports --num_cpu_threads_per_process as OMP_NUM_THREADS: that is the user's choice too.
    argv = ["python", "-m", "accelerate.commands.launch", "--num_cpu_threads_per_process", "4", "train.py"]
    assert user_thread_setting({"OMP_NUM_THREADS": "4"}, True, {}, argv) == "4"
    # The launcher's environment unreadable: 1 may be the launcher's default, anything else is the user's.
    assert user_thread_setting(worker, True, None) is None
    assert user_thread_setting({"OMP_NUM_THREADS": "6"}, True, None) == "6"
    assert launcher_environment(os.getpid())["PATH"] == os.environ["PATH"]
    assert launcher_environment(2 ** 22 + 1) is None  # no such process


PROBE = textwrap.dedent("""
    import os
    before = os.environ.get("OMP_NUM_THREADS")
    from qa.lifecycle import startup
    startup.prepare_process()
    import torch
    print(f"rank={os.environ.get('RANK', '0')} before={before} torch={torch.get_num_threads()} "
          f"line={startup.threads.describe()}", flush=True)
""")


def _launch(tmp_path: Path, launcher: list[str], omp: str | None) -> list[str]:
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    out = subprocess.run([sys.executable, "-m", *launcher, str(probe)], env=env, capture_output=True, text=True,
                         timeout=240, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    return sorted(line for line in out.stdout.splitlines() if line.startswith("rank="))


def test_real_launchers(tmp_path: Path) -> None:
    cores = cores_available()
    share = max(cores // 2, 1)
    # torchrun, 2 ranks, nothing set: torchrun exports 1, the ranks take their share of the cores.
    lines = _launch(tmp_path, ["torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())],
                    None)
    assert lines == [f"rank={r} before=1 torch={share} line={share} CPU thread{'s' if share > 1 else ''} per rank "
                     f"({cores} core{'s' if cores > 1 else ''} available / 2 ranks on this node)" for r in (0, 1)]
    # The same launch with the user's OMP_NUM_THREADS=1: the same number in the workers' environment, but the user's.
    lines = _launch(tmp_path, ["torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())],
                    "1")
    assert lines == [f"rank={r} before=1 torch=1 line=1 CPU thread per rank (OMP_NUM_THREADS=1 from the user)"
                     for r in (0, 1)]
    # accelerate's simple launcher, 1 process: it exports 1 unless told; the one rank uses every core it may.
    lines = _launch(tmp_path, ["accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
                               "--mixed_precision", "no", "--dynamo_backend", "no"], None)
    assert len(lines) == 1 and f"torch={cores} " in lines[0], lines
