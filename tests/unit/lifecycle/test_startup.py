"""Worker start-up: repeated library warnings once, the DeepSpeed op cache per environment, the timeline line."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from qa.lifecycle.startup import format_timeline

# Torch's own deprecation warning from a real 1-rank gloo collective, with the warning-registry resets that
# libraries do between calls (warnings.catch_warnings), as under DeepSpeed ZeRO on CPU.
COLLECTIVES = textwrap.dedent("""
    import sys, warnings
    import torch, torch.distributed as dist
    from qa.distributed.accelerator import free_port
    if sys.argv[1] == "quiet":
        from qa.lifecycle.startup import quiet_repeated_warnings
        quiet_repeated_warnings()
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{free_port()}")
    x, y = torch.ones(4), torch.zeros(4)
    for _ in range(20):
        with warnings.catch_warnings():
            pass
        dist.reduce_scatter_tensor(y, x)
        dist.all_gather_into_tensor(y, x)
    warnings.warn("an unrelated warning", UserWarning)
    warnings.warn("an unrelated warning", UserWarning)
    dist.destroy_process_group()
""")


def _stderr(mode: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", COLLECTIVES, mode], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_repeated_torch_deprecation_warnings_show_once() -> None:
    noisy, quiet = _stderr("default"), _stderr("quiet")
    for name in ("reduce_scatter_tensor", "all_gather_into_tensor"):
        needle = f"`torch.distributed.{name}` is deprecated"
        assert noisy.count(needle) == 20  # what the suite saw hundreds of times per ZeRO-3 rank
        assert quiet.count(needle) == 1
    # Other warnings keep Python's rules.
    assert quiet.count("an unrelated warning") == noisy.count("an unrelated warning") >= 1


def test_deepspeed_op_cache_is_private_to_the_environment(tmp_path: Path) -> None:
    probe = "import os; from qa.lifecycle import startup; startup.prepare_process(); print(os.environ['TORCH_EXTENSIONS_DIR'])"
    env = {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == str(Path(sys.prefix) / "torch_extensions"), out.stderr
    out = subprocess.run([sys.executable, "-c", probe], env={**env, "TORCH_EXTENSIONS_DIR": str(tmp_path)},
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == str(tmp_path)  # an explicit choice wins


def test_the_collector_pauses_for_the_imports_and_skips_what_they_made() -> None:
    probe = ("import gc; from qa.lifecycle import startup; startup.prepare_process(); paused = not gc.isenabled(); "
             "import torch, transformers; startup.imports_done(); "
             "print(paused, gc.isenabled(), gc.get_freeze_count() > 100_000); "
             "made = [[] for _ in range(1000)]; startup.before_exit(); print(gc.get_count() == (0, 0, 0))")
    out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # Paused while torch loaded, on again after it, the imported objects frozen; at exit nothing is left to walk.
    assert out.stdout.split() == ["True", "True", "True", "True"]


def test_ctrl_c_before_training_exits_130_with_one_line() -> None:
    probe = ("import os, signal, time; from qa.lifecycle import startup; startup.prepare_process(); "
             "os.kill(os.getpid(), signal.SIGINT); time.sleep(30)")
    out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 130
    assert out.stderr.strip().splitlines() == ["interrupted (SIGINT) outside the training loop: exiting at once, "
                                               "nothing saved"]


def test_timeline_line() -> None:
    marks = [("start", 100.0), ("launcher", 102.5), ("imports", 106.0), ("setup", 107.25), ("data", 108.0),
             ("model", 110.0), ("step", 110.6)]
    assert format_timeline(marks) == ("first step after 10.6s (launcher 2.5, imports 3.5, setup 1.2, data 0.8, "
                                      "model 2.0, step 0.6)")
