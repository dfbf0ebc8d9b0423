"""``python -m qa.preflight launch-info NPROC GPU --config X.yaml [--key value ...]`` prints what the launch/
scripts need from a run config (output_dir, DeepSpeed JSON, matching accelerate config). It parses the config as
train.py does, so it imports transformers (HfArgumentParser) and, through transformers.SchedulerType, torch: about
3.5 s of CPU on the 2-core CI machine, once per launch.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from qa.checkpoint.output_dir import check_output_dir
from qa.config import Config
from qa.errors import EXIT_INTERRUPTED, EXIT_PREEMPTED, ConfigError
from qa.preflight.checks import ACCELERATE_CONFIGS
from qa.preflight.config_checks import load_and_check, output_dir_use

# ---------------------------------------------------------------------------------------------------------
# launch/ script helper (it runs before every launch)
# ---------------------------------------------------------------------------------------------------------


def accelerate_config_for(cfg: Config, nproc: int, gpu: bool) -> str:
    """The configs/accelerate/ YAML a one-machine launch of ``cfg`` should use ("" when none applies)."""
    if not gpu or cfg.distributed.deepspeed is None:
        return ""
    if nproc == 1:
        return str(ACCELERATE_CONFIGS / "1gpu.yaml")
    try:
        z = json.loads(Path(cfg.distributed.deepspeed).read_text()).get("zero_optimization", {})
    except (OSError, json.JSONDecodeError):
        z = {}
    offloaded = any(z.get(k, {}).get("device", "none") != "none"
                    for k in ("offload_optimizer", "offload_param"))
    if z.get("stage") == 3:
        return str(ACCELERATE_CONFIGS / ("zero3_offload.yaml" if offloaded else "8gpu_zero3_fp16.yaml"))
    return str(ACCELERATE_CONFIGS / "8gpu_zero2_fp16.yaml")


def launch_info(argv: Sequence[str], *, nproc: int, gpu: bool) -> dict[str, str]:
    cfg = load_and_check(argv, check_files=False)
    check_output_dir(output_dir_use(cfg))  # another run's output_dir: exit 2 here rather than 1 from inside the launcher
    return {"output_dir": cfg.run.output_dir, "deepspeed": cfg.distributed.deepspeed or "",
            "accelerate_config": accelerate_config_for(cfg, nproc, gpu),
            # The exit codes the scripts act on, from the one place they are defined (qa/errors.py).
            "exit_preempted": str(EXIT_PREEMPTED), "exit_interrupted": str(EXIT_INTERRUPTED)}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[0] != "launch-info" or not argv[1].isdigit() or argv[2] not in ("0", "1"):
        print("usage: python -m qa.preflight launch-info NPROC GPU(0|1) --config FILE.yaml [--key value ...]",
              file=sys.stderr)
        return 2
    try:
        info = launch_info(argv[3:], nproc=int(argv[1]), gpu=argv[2] == "1")
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    for key, value in info.items():
        if "\n" in value:
            print(f"config error: {key} contains a newline", file=sys.stderr)
            return 2
        print(f"{key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
