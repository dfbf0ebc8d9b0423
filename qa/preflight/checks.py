"""Launch checks: combinations that would fail, or silently train something else, minutes into a cluster job."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from qa.config import Config
from qa.data.global_batch import global_batch, ways_to_make
from qa.errors import ConfigError

ACCELERATE_CONFIGS = Path("configs/accelerate")
# The accelerate config variables that DeepSpeedPlugin refuses next to a DeepSpeed JSON (it raises at
# start-up, see accelerate.utils.dataclasses.DeepSpeedPlugin._deepspeed_config_checks); the JSON and the run
# config own them.
_ACCELERATE_FIELDS_REFUSED_WITH_JSON = frozenset({
    "gradient_accumulation_steps", "gradient_clipping", "zero_stage", "offload_optimizer_device",
    "offload_param_device", "offload_param_nvme_path", "offload_optimizer_nvme_path",
    "zero3_save_16bit_model", "mixed_precision",
})
# DeepSpeed scheduler types and the lr_scheduler_type with the same shape (linear warmup assumed).
_DS_SCHEDULER_SHAPES = {
    "WarmupDecayLR": "linear", "WarmupCosineLR": "cosine", "WarmupLR": "constant_with_warmup",
}




# ---------------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------------


def _read_json(path: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"deepspeed: cannot read {path}: {e}") from None


def _check_total_batch(cfg: Config, world_size: int) -> None:
    total = cfg.batch.total_train_batch_size
    micro, acc = cfg.batch.per_device_train_batch_size, cfg.batch.gradient_accumulation_steps
    actual = global_batch(micro, world_size, acc)
    if total is None or total == actual:
        return
    head = (f"total_train_batch_size: {total}, but per_device_train_batch_size {micro} x {world_size} "
            f"process(es) x gradient_accumulation_steps {acc} = {actual}")
    ways = ways_to_make(total, per_device=micro, world_size=world_size, accumulation=acc)
    fixes = [" ".join(f"--{k} {v}" for k, v in way.items()) for way in ways]
    if fixes:
        raise ConfigError(f"{head}; on {world_size} process(es) set " + " or ".join(fixes))
    fits = [n for n in range(1, total + 1) if total % (n * micro * acc) == 0]
    hint = (f"; {', '.join(map(str, fits[-4:]))} processes would make it with these per-device and "
            "accumulation values") if fits else ""
    raise ConfigError(f"{head}; a world size of {world_size} cannot make {total} ({total} is not a multiple "
                      f"of {world_size}): launch a number of processes that divides {total}{hint}, or change "
                      "total_train_batch_size")


def _check_launcher_env(cfg: Config, env: dict[str, str] | os._Environ) -> None:
    """The accelerate launcher's DeepSpeed settings must agree with the run config, which is what counts."""
    use_ds = env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    env_json = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if cfg.distributed.deepspeed is None:
        if use_ds:
            raise ConfigError(
                "deepspeed: the launcher turned DeepSpeed on (ACCELERATE_USE_DEEPSPEED=true, from "
                "`accelerate launch --use_deepspeed` or a DEEPSPEED accelerate config) but the run config "
                "has deepspeed: null, so Accelerate would build an engine from the launcher's defaults "
                f"instead of this config; set --deepspeed {env_json or 'configs/deepspeed/zero2.json'} or "
                "launch without DeepSpeed")
        return
    if env_json and env_json.lower() != "none" and not _same_json(env_json, cfg.distributed.deepspeed):
        raise ConfigError(
            f"deepspeed: the accelerate config points at {env_json} (ACCELERATE_DEEPSPEED_CONFIG_FILE) but "
            f"the run config has deepspeed: {cfg.distributed.deepspeed}. The run config's JSON is the one the "
            f"Accelerator is built with; make them agree: pass --deepspeed {env_json}, or launch with "
            f"--deepspeed_config_file {cfg.distributed.deepspeed} (or the configs/accelerate/ YAML written for that "
            "JSON)")
    fields = {f.strip() for f in env.get("ACCELERATE_CONFIG_DS_FIELDS", "").split(",") if f.strip()}
    refused = sorted(fields & _ACCELERATE_FIELDS_REFUSED_WITH_JSON)
    if refused:
        raise ConfigError(
            f"deepspeed: the accelerate config sets {refused}, which Accelerate refuses next to a DeepSpeed "
            "JSON (it raises when the Accelerator starts); remove them from the accelerate YAML (or pass "
            "--mixed_precision on the command line): the run config and the JSON own these values")


def _same_json(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    if pa.resolve() == pb.resolve():
        return True
    try:
        return json.loads(pa.read_text()) == json.loads(pb.read_text())
    except (OSError, json.JSONDecodeError):
        return False


def _check_ds_values(cfg: Config, raw: dict[str, Any], path: str) -> None:
    """Values qa.distributed.accelerator.load_deepspeed_config leaves alone: explicit ones must agree with the run YAML."""
    if "zero_optimization" not in raw:
        raise ConfigError(f"deepspeed: {path} has no \"zero_optimization\" section (Accelerate requires "
                          "one); add {\"zero_optimization\": {\"stage\": 2}} or set deepspeed: null for DDP")
    opt = raw.get("optimizer")
    sched = raw.get("scheduler")
    if opt is not None:
        params = opt.get("params", {})
        for key, want, name in (("lr", cfg.optimizer.learning_rate, "learning_rate"),
                                ("betas", [cfg.optimizer.adam_beta1, cfg.optimizer.adam_beta2], "adam_beta1/adam_beta2"),
                                ("eps", cfg.optimizer.adam_epsilon, "adam_epsilon"),
                                ("weight_decay", cfg.optimizer.weight_decay, "weight_decay")):
            got = params.get(key, "auto")
            if got != "auto" and _differs(got, want):
                raise ConfigError(f"deepspeed: {path} sets optimizer.params.{key}={got} but {name} is "
                                  f"{want}; set it to \"auto\" so the run config owns it")
        if sched is None:
            # Verified with accelerate 1.15: qa.model.optim builds DummyOptim for a JSON optimizer, which a
            # transformers schedule cannot wrap (no param_groups); Accelerate then takes DummyScheduler only.
            raise ConfigError(
                f"deepspeed: {path} has an \"optimizer\" section but no \"scheduler\" section, so the run's "
                "lr_scheduler_type cannot drive DeepSpeed's optimizer and the run fails when it builds the "
                "schedule; remove the optimizer section (with offload, Accelerate turns our AdamW into "
                "DeepSpeed's CPU Adam itself) or add a scheduler section such as WarmupDecayLR with \"auto\" "
                "values")
    if sched is not None:
        stype = sched.get("type")
        shape = _DS_SCHEDULER_SHAPES.get(stype)
        if shape is not None and shape != cfg.optimizer.lr_scheduler_type:
            raise ConfigError(f"lr_scheduler_type: {cfg.optimizer.lr_scheduler_type}, but {path} has a {stype} "
                              "scheduler (DeepSpeed's schedule replaces ours); set lr_scheduler_type: "
                              f"{shape} or remove the scheduler section")
        params = sched.get("params", {})
        warm = params.get("warmup_num_steps", "auto")
        from_ratio = warm == "auto" and cfg.optimizer.warmup_ratio > 0  # >= 1 step once the step count is known
        warm = cfg.optimizer.num_warmup_steps if warm == "auto" else warm
        if stype in _DS_SCHEDULER_SHAPES and not from_ratio and (not isinstance(warm, int) or warm <= 0):
            raise ConfigError(f"num_warmup_steps: DeepSpeed's {stype} (from {path}) needs warmup_num_steps "
                              f">= 1, got {warm}; set num_warmup_steps to at least 1")
        for key, want, name in (("warmup_num_steps", cfg.optimizer.num_warmup_steps, "num_warmup_steps"),
                                ("warmup_max_lr", cfg.optimizer.learning_rate, "learning_rate")):
            got = params.get(key, "auto")
            if got != "auto" and _differs(got, want):
                raise ConfigError(f"deepspeed: {path} sets scheduler.params.{key}={got} but {name} is "
                                  f"{want}; set it to \"auto\" so the run config owns it")


def _differs(got: Any, want: Any) -> bool:
    if isinstance(want, list):
        return not isinstance(got, list) or len(got) != len(want) or any(
            _differs(g, w) for g, w in zip(got, want, strict=True))
    try:
        return not math.isclose(float(got), float(want), rel_tol=1e-9, abs_tol=0.0)
    except (TypeError, ValueError):
        return True


def _offload(ds: dict[str, Any] | None) -> tuple[str, str]:
    z = (ds or {}).get("zero_optimization", {})
    return (str(z.get("offload_optimizer", {}).get("device", "none")),
            str(z.get("offload_param", {}).get("device", "none")))


def _gathers_16bit_weights(ds: dict[str, Any], env: dict[str, str] | os._Environ) -> bool:
    value = ds.get("zero_optimization", {}).get("stage3_gather_16bit_weights_on_model_save", False)
    if value == "auto":  # filled from the accelerate config's zero3_save_16bit_model (default false)
        return env.get("ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL", "false").lower() == "true"
    return bool(value)


def check_plan(cfg: Config, world_size: int, cuda: bool) -> list[str]:
    """Raise ConfigError (saying what to change) for an inconsistent launch; return warnings otherwise."""
    from qa.distributed.accelerator import load_deepspeed_config, zero_stage
    from qa.distributed.precision import machine_precision

    env = os.environ
    if world_size < 1:
        raise ConfigError(f"world size must be >= 1, got {world_size}")
    choice = machine_precision(cfg.distributed.mixed_precision, cuda)  # fp16 on a CPU-only launch raises here
    precision = choice.precision
    _check_total_batch(cfg, world_size)
    _check_launcher_env(cfg, env)
    warnings: list[str] = [choice.warning] if choice.warning else []
    # batch, precision, clipping
    ds = load_deepspeed_config(cfg.distributed, cfg.optimizer, cfg.batch, world_size=world_size, precision=precision)
    if ds is not None:
        path = str(cfg.distributed.deepspeed)
        _check_ds_values(cfg, _read_json(path), path)
        stage = zero_stage(ds)
        off_opt, off_param = _offload(ds)
        if stage == 3:
            warnings += _check_zero3(cfg, ds, path, env, world_size)
        elif off_param != "none":
            warnings.append(f"{path}: offload_param only applies to ZeRO-3; stage {stage} ignores it")
        if stage in (1, 2) and world_size == 1 and off_opt == "none":
            warnings.append(f"ZeRO-{stage} on 1 process shards nothing (DeepSpeed still runs the mixed "
                            "precision)")
    if not cuda and world_size > 1:
        warnings.append(f"{world_size} CPU processes communicate over gloo: fine for tests, slow for "
                        "training")
    if cfg.run.do_train and cfg.schedule.checkpointing_steps is None:
        warnings.append("checkpointing_steps is null: only a preemption signal saves a checkpoint; a crash "
                        "or a node failure loses the run")
    return warnings


def _check_zero3(cfg: Config, ds: dict[str, Any], path: str, env: dict[str, str] | os._Environ,
                 world_size: int) -> list[str]:
    """ZeRO-3's refusals (weights it cannot gather, resume or compile); its warnings otherwise."""
    warnings: list[str] = []
    if not _gathers_16bit_weights(ds, env):
        needs = [w for w, on in (("the final export to output_dir/final (do_train)", cfg.run.do_train),
                                 ("export_every_checkpoint", cfg.checkpoint.export_every_checkpoint)) if on]
        if needs:
            raise ConfigError(
                f"deepspeed: {path} has zero_optimization.stage3_gather_16bit_weights_on_model_save "
                f"false, but {' and '.join(needs)} needs the full weights gathered from the ZeRO-3 "
                "shards; set it to true")
    if cfg.checkpoint.resume_weights_only:
        # Verified with deepspeed 0.19 / accelerate 1.15: load_state(load_module_only=True) under
        # ZeRO-3 reads the empty parameter placeholders of mp_rank_00_model_states.pt and keeps the
        # initial weights, silently (DeepSpeed gathers the real ones only with
        # load_optimizer_states=False).
        raise ConfigError(
            "resume_weights_only: under ZeRO-3 the weights-only resume silently keeps the initial "
            "weights (the checkpoint's module file holds only partition placeholders); resume with "
            "the full state on the same world size (resume_weights_only: false), or start from an "
            "exported model (model_name_or_path: <output_dir>/final, or a checkpoint's model/ "
            "written by export_every_checkpoint)")
    if cfg.model.torch_compile:
        # Verified with torch 2.13 / deepspeed 0.19: compiling the model before DeepSpeed wraps it
        # fails in ZeRO-3's forward pre-hook ('dict' object has no attribute '_in_forward'); see also
        # pytorch/pytorch#115484.
        raise ConfigError("torch_compile: torch.compile of the model is not supported with DeepSpeed "
                          "ZeRO-3 (its parameter-gathering hooks fail inside the compiled forward); "
                          "set torch_compile: false or use ZeRO-2 (configs/deepspeed/zero2.json)")
    if world_size == 1:
        warnings.append("ZeRO-3 on 1 process shards nothing; ZeRO-2 (or no DeepSpeed) is faster")
    return warnings


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def check_launch(cfg: Config) -> None:
    """Start-up check of the real launch (world size from the launcher's environment); warnings are logged."""
    import logging
    import sys

    import torch

    from qa.lifecycle.watchdog import parent_argv
    from qa.preflight.limits import check_sequence_length
    from qa.preflight.process_count import check_process_count

    check_process_count(cfg, os.environ, sys.argv, parent_argv())  # the simple launcher's one process
    check_sequence_length(cfg)  # windows that fit the model's positions and the tokenizer
    world = int(os.environ.get("WORLD_SIZE", "1"))
    for warning in check_plan(cfg, world, torch.cuda.is_available()):
        if _rank() == 0:
            logging.getLogger(__name__).warning(warning)
