"""The dry run: resolve and check everything a launch implies, print it, load no weights.

``train.py --dry_run`` prints :func:`describe_plan`. :func:`check_plan` raises ConfigError for combinations
that would otherwise fail (or silently train something else) minutes into a job on the cluster, and returns
warnings for legal but doubtful ones. The tokenizer and the data are loaded, so feature and step counts are
exact (and the feature cache is warm for the real run); the model is only built on the meta device, to count
its parameters.

``python -m qa.plan launch-info NPROC GPU --config X.yaml [--key value ...]`` prints what the launch/ scripts
need from a run config (output_dir, DeepSpeed JSON, matching accelerate config) without importing torch.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qa.config import ConfigError, TrainConfig, load_config

GIB = 1024**3
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
# Memory of the model states (ZeRO paper, Rajbhandari et al. 2020, sections 3 and 5)
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per rank for parameters, gradients and Adam states; activations are deliberately left out."""

    num_params: int
    stage: int
    world_size: int
    params_gpu: float
    grads_gpu: float
    optimizer_gpu: float
    host: float  # bytes per rank that offload keeps in CPU memory (or on NVMe) instead
    formula: str

    @property
    def gpu_total(self) -> float:
        return self.params_gpu + self.grads_gpu + self.optimizer_gpu


def estimate_memory(num_params: int, *, stage: int, world_size: int, mixed_precision_states: bool,
                    offload_optimizer: bool = False, offload_params: bool = False) -> MemoryEstimate:
    """Per-rank model-state memory under ZeRO ``stage`` on ``world_size`` data-parallel ranks.

    ``mixed_precision_states``: DeepSpeed fp16/bf16 keeps 16-bit params (2Ψ) and grads (2Ψ) plus an fp32
    master copy, Adam m and v (12Ψ). Otherwise (fp32, or plain DDP where autocast keeps fp32 weights) it is
    4Ψ + 4Ψ + 8Ψ. Stage 1 shards the optimizer states, 2 also the gradients, 3 also the parameters.
    Offload moves the optimizer states (and under ZeRO-3 the parameters) off the GPU.
    """
    p, g, k = (2, 2, 12) if mixed_precision_states else (4, 4, 8)
    n = world_size
    labels = ("16-bit params", "16-bit grads", "fp32 master + Adam m, v") if mixed_precision_states \
        else ("fp32 params", "fp32 grads", "Adam m, v")
    # (bytes per parameter, sharded over N?, kept off the GPU?)
    terms = [
        (p, stage >= 3, offload_params and stage >= 3),
        (g, stage >= 2, False),
        (k, stage >= 1, offload_optimizer and stage >= 1),
    ]
    gpu, host = [], 0.0
    for coef, sharded, off in terms:
        size = coef * num_params / (n if sharded else 1)
        gpu.append(0.0 if off else size)
        host += size if off else 0.0

    def term(coef: int, sharded: bool) -> str:
        return f"{coef}Ψ/N" if sharded else f"{coef}Ψ"

    on_gpu = [(c, s, lab) for (c, s, off), lab in zip(terms, labels, strict=True) if not off]
    formula = " + ".join(f"{term(c, s)} ({lab})" for c, s, lab in on_gpu) or "0"
    whole = sum(c for c, s, _ in on_gpu if not s)
    shard = sum(c for c, s, _ in on_gpu if s)
    simple = " + ".join(x for x in (f"{whole}Ψ" if whole else "", f"{shard}Ψ/N" if shard else "") if x)
    if len(on_gpu) > 1:
        formula += f" = {simple}"
    off_terms = [(c, s, lab) for (c, s, off), lab in zip(terms, labels, strict=True) if off]
    if off_terms:
        formula += "; offloaded per rank: " + " + ".join(
            f"{term(c, s)} ({lab})" for c, s, lab in off_terms)
    return MemoryEstimate(num_params=num_params, stage=stage, world_size=n, params_gpu=gpu[0],
                          grads_gpu=gpu[1], optimizer_gpu=gpu[2], host=host, formula=formula)


def count_parameters_from_config(config: Any) -> int:
    """Parameters of the QA model for a transformers config, built on the meta device (no weights)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForQuestionAnswering

    with init_empty_weights():
        model = AutoModelForQuestionAnswering.from_config(config)
    return sum(p.numel() for p in model.parameters())


def count_parameters(cfg: TrainConfig) -> tuple[int | None, str]:
    """(parameter count, model class) or (None, why it is unknown): needs only the model's config.json."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(cfg.model_name_or_path)
    except Exception as e:  # noqa: BLE001 - offline hub names raise several types; the plan says so
        return None, f"unknown (needs the model config; {type(e).__name__})"
    from transformers import AutoModelForQuestionAnswering

    try:
        cls = AutoModelForQuestionAnswering._model_mapping[type(config)].__name__
    except KeyError:
        raise ConfigError(f"model_name_or_path: {cfg.model_name_or_path} ({type(config).__name__}) has no "
                          "question-answering head in transformers") from None
    return count_parameters_from_config(config), cls


# ---------------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------------


def _read_json(path: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"deepspeed: cannot read {path}: {e}") from None


def _check_total_batch(cfg: TrainConfig, world_size: int) -> None:
    total = cfg.total_train_batch_size
    micro, acc = cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps
    actual = micro * world_size * acc
    if total is None or total == actual:
        return
    head = (f"total_train_batch_size: {total}, but per_device_train_batch_size {micro} x {world_size} "
            f"process(es) x gradient_accumulation_steps {acc} = {actual}")
    fixes = []
    if total % (micro * world_size) == 0:
        fixes.append(f"--gradient_accumulation_steps {total // (micro * world_size)}")
    if total % (world_size * acc) == 0:
        fixes.append(f"--per_device_train_batch_size {total // (world_size * acc)}")
    if not fixes and total % world_size == 0:
        fixes.append(f"--per_device_train_batch_size {total // world_size} --gradient_accumulation_steps 1")
    if fixes:
        raise ConfigError(f"{head}; on {world_size} process(es) set " + " or ".join(fixes))
    fits = [n for n in range(1, total + 1) if total % (n * micro * acc) == 0]
    hint = (f"; {', '.join(map(str, fits[-4:]))} processes would make it with these per-device and "
            "accumulation values") if fits else ""
    raise ConfigError(f"{head}; a world size of {world_size} cannot make {total} ({total} is not a multiple "
                      f"of {world_size}): launch a number of processes that divides {total}{hint}, or change "
                      "total_train_batch_size")


def _check_launcher_env(cfg: TrainConfig, env: dict[str, str] | os._Environ) -> None:
    """The accelerate launcher's DeepSpeed settings must agree with the run config, which is what counts."""
    use_ds = env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    env_json = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if cfg.deepspeed is None:
        if use_ds:
            raise ConfigError(
                "deepspeed: the launcher turned DeepSpeed on (ACCELERATE_USE_DEEPSPEED=true, from "
                "`accelerate launch --use_deepspeed` or a DEEPSPEED accelerate config) but the run config "
                "has deepspeed: null, so Accelerate would build an engine from the launcher's defaults "
                f"instead of this config; set --deepspeed {env_json or 'configs/deepspeed/zero2.json'} or "
                "launch without DeepSpeed")
        return
    if env_json and env_json.lower() != "none" and not _same_json(env_json, cfg.deepspeed):
        raise ConfigError(
            f"deepspeed: the accelerate config points at {env_json} (ACCELERATE_DEEPSPEED_CONFIG_FILE) but "
            f"the run config has deepspeed: {cfg.deepspeed}. The run config's JSON is the one the "
            f"Accelerator is built with; make them agree: pass --deepspeed {env_json}, or launch with "
            f"--deepspeed_config_file {cfg.deepspeed} (or the configs/accelerate/ YAML written for that "
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


def _check_ds_values(cfg: TrainConfig, raw: dict[str, Any], path: str) -> None:
    """Values qa.modeling.load_deepspeed_config leaves alone: explicit ones must agree with the run YAML."""
    if "zero_optimization" not in raw:
        raise ConfigError(f"deepspeed: {path} has no \"zero_optimization\" section (Accelerate requires "
                          "one); add {\"zero_optimization\": {\"stage\": 2}} or set deepspeed: null for DDP")
    opt = raw.get("optimizer")
    sched = raw.get("scheduler")
    if opt is not None:
        params = opt.get("params", {})
        for key, want, name in (("lr", cfg.learning_rate, "learning_rate"),
                                ("betas", [cfg.adam_beta1, cfg.adam_beta2], "adam_beta1/adam_beta2"),
                                ("eps", cfg.adam_epsilon, "adam_epsilon"),
                                ("weight_decay", cfg.weight_decay, "weight_decay")):
            got = params.get(key, "auto")
            if got != "auto" and _differs(got, want):
                raise ConfigError(f"deepspeed: {path} sets optimizer.params.{key}={got} but {name} is "
                                  f"{want}; set it to \"auto\" so the run config owns it")
        if sched is None:
            # Verified with accelerate 1.15: qa.modeling builds DummyOptim for a JSON optimizer, which a
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
        if shape is not None and shape != cfg.lr_scheduler_type:
            raise ConfigError(f"lr_scheduler_type: {cfg.lr_scheduler_type}, but {path} has a {stype} "
                              "scheduler (DeepSpeed's schedule replaces ours); set lr_scheduler_type: "
                              f"{shape} or remove the scheduler section")
        params = sched.get("params", {})
        warm = params.get("warmup_num_steps", "auto")
        warm = cfg.num_warmup_steps if warm == "auto" else warm
        if stype in _DS_SCHEDULER_SHAPES and (not isinstance(warm, int) or warm <= 0):
            raise ConfigError(f"num_warmup_steps: DeepSpeed's {stype} (from {path}) needs warmup_num_steps "
                              f">= 1, got {warm}; set num_warmup_steps to at least 1")
        for key, want, name in (("warmup_num_steps", cfg.num_warmup_steps, "num_warmup_steps"),
                                ("warmup_max_lr", cfg.learning_rate, "learning_rate")):
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


def check_plan(cfg: TrainConfig, world_size: int, cuda: bool) -> list[str]:
    """Raise ConfigError (saying what to change) for an inconsistent launch; return warnings otherwise."""
    from qa.modeling import load_deepspeed_config, resolve_precision, zero_stage

    env = os.environ
    if world_size < 1:
        raise ConfigError(f"world size must be >= 1, got {world_size}")
    precision = resolve_precision(cfg, cuda)  # fp16 on a CPU-only launch raises here
    _check_total_batch(cfg, world_size)
    _check_launcher_env(cfg, env)
    warnings: list[str] = []
    ds = load_deepspeed_config(cfg, world_size=world_size, precision=precision)  # batch, precision, clipping
    if ds is not None:
        path = str(cfg.deepspeed)
        _check_ds_values(cfg, _read_json(path), path)
        stage = zero_stage(ds)
        off_opt, off_param = _offload(ds)
        if stage == 3:
            if not _gathers_16bit_weights(ds, env):
                needs = [w for w, on in (("the final export to output_dir/final (do_train)", cfg.do_train),
                                         ("export_every_checkpoint", cfg.export_every_checkpoint)) if on]
                if needs:
                    raise ConfigError(
                        f"deepspeed: {path} has zero_optimization.stage3_gather_16bit_weights_on_model_save "
                        f"false, but {' and '.join(needs)} needs the full weights gathered from the ZeRO-3 "
                        "shards; set it to true")
            if cfg.resume_weights_only:
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
            if cfg.torch_compile:
                # Verified with torch 2.13 / deepspeed 0.19: compiling the model before DeepSpeed wraps it
                # fails in ZeRO-3's forward pre-hook ('dict' object has no attribute '_in_forward'); see also
                # pytorch/pytorch#115484.
                raise ConfigError("torch_compile: torch.compile of the model is not supported with DeepSpeed "
                                  "ZeRO-3 (its parameter-gathering hooks fail inside the compiled forward); "
                                  "set torch_compile: false or use ZeRO-2 (configs/deepspeed/zero2.json)")
            if world_size == 1:
                warnings.append("ZeRO-3 on 1 process shards nothing; ZeRO-2 (or no DeepSpeed) is faster")
        elif off_param != "none":
            warnings.append(f"{path}: offload_param only applies to ZeRO-3; stage {stage} ignores it")
        if stage in (1, 2) and world_size == 1 and off_opt == "none":
            warnings.append(f"ZeRO-{stage} on 1 process shards nothing (DeepSpeed still runs the mixed "
                            "precision)")
    if not cuda and world_size > 1:
        warnings.append(f"{world_size} CPU processes communicate over gloo: fine for tests, slow for "
                        "training")
    if cfg.do_train and cfg.checkpointing_steps is None:
        warnings.append("checkpointing_steps is null: only a preemption signal saves a checkpoint; a crash "
                        "or a node failure loses the run")
    return warnings


# ---------------------------------------------------------------------------------------------------------
# Data, schedule
# ---------------------------------------------------------------------------------------------------------


@dataclass
class DataCounts:
    train_examples: int | None = None
    train_features: int | None = None
    eval_examples: int | None = None
    eval_features: int | None = None
    train_unknown: str = "unknown (needs the dataset)"
    eval_unknown: str = "unknown (needs the dataset)"


def count_data(cfg: TrainConfig) -> DataCounts:
    """Examples and features exactly as the run builds them (same functions, same cache fingerprints)."""
    import datasets

    from qa import data as qa_data
    from qa.data import DataError
    from qa.modeling import load_tokenizer

    counts = DataCounts()
    tokenizer: Any = None
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        for split, want, data_file, max_samples in (
                ("train", cfg.do_train, cfg.train_file, cfg.max_train_samples),
                ("validation", cfg.do_eval, cfg.validation_file, cfg.max_eval_samples)):
            if not want:
                continue
            try:
                examples = qa_data.load_examples(
                    dataset_name=cfg.dataset_name, dataset_config_name=cfg.dataset_config_name,
                    data_file=data_file, split=split, skip_misaligned=cfg.skip_misaligned_answers,
                    max_samples=max_samples, version_2_with_negative=cfg.version_2_with_negative)
            except DataError:
                raise  # bad data fails the dry run, exactly as it would fail the run
            except Exception as e:  # noqa: BLE001 - a hub dataset that is not cached, offline: several types
                _set(counts, split, unknown=f"unknown (needs the dataset; {type(e).__name__})")
                continue
            _set(counts, split, examples=len(examples))
            if tokenizer is None:
                try:
                    tokenizer = load_tokenizer(cfg)
                except ConfigError:
                    raise
                except Exception as e:  # noqa: BLE001 - a hub tokenizer that is not cached, offline
                    why = f"unknown (needs the tokenizer; {type(e).__name__})"
                    counts.train_unknown = counts.eval_unknown = why
                    tokenizer = False
            if tokenizer is False:
                continue
            kwargs = {"max_seq_length": cfg.max_seq_length, "doc_stride": cfg.doc_stride,
                      "num_proc": cfg.preprocessing_num_workers, "overwrite_cache": cfg.overwrite_cache,
                      "source": data_file or f"{cfg.dataset_name}:{split}"}
            build = qa_data.build_train_features if split == "train" else qa_data.build_eval_features
            _set(counts, split, features=len(build(examples, tokenizer, **kwargs)))
    finally:
        if bars:
            datasets.enable_progress_bars()
    return counts


def _set(counts: DataCounts, split: str, *, examples: int | None = None, features: int | None = None,
         unknown: str | None = None) -> None:
    prefix = "train" if split == "train" else "eval"
    if examples is not None:
        setattr(counts, f"{prefix}_examples", examples)
    if features is not None:
        setattr(counts, f"{prefix}_features", features)
    if unknown is not None:
        setattr(counts, f"{prefix}_unknown", unknown)


@dataclass(frozen=True)
class Schedule:
    global_batch: int
    steps_per_epoch: int
    total_steps: int
    epochs: int

    def epoch_ends(self) -> list[int]:
        """Steps at which an epoch runs to its end (a max_train_steps run may stop inside its last one)."""
        ends = (k * self.steps_per_epoch for k in range(1, self.epochs + 1))
        return [s for s in ends if s <= self.total_steps]

    def epoch_evaluations(self) -> list[int]:
        """Per-epoch evaluations: every epoch end but the last epoch's, which the final evaluation replaces."""
        return [s for s in self.epoch_ends() if s // self.steps_per_epoch < self.epochs]


def training_schedule(cfg: TrainConfig, train_features: int, world_size: int) -> Schedule:
    """Optimizer steps as qa.run computes them (whole global batches per step, the remainder dropped)."""
    from qa.loop import total_steps

    global_batch = cfg.per_device_train_batch_size * world_size * cfg.gradient_accumulation_steps
    per_epoch = train_features // global_batch
    if per_epoch == 0:
        raise ConfigError(
            f"per_device_train_batch_size: {train_features} training features cannot fill one optimizer step "
            f"of {cfg.per_device_train_batch_size} x {world_size} process(es) x "
            f"{cfg.gradient_accumulation_steps} accumulation; lower the batch size or the accumulation, or "
            "add data")
    # batches per epoch per rank, as StepBatchSampler yields them
    total, epochs = total_steps(cfg, per_epoch * cfg.gradient_accumulation_steps)
    return Schedule(global_batch=global_batch, steps_per_epoch=per_epoch, total_steps=total, epochs=epochs)


# ---------------------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------------------


def _int(n: int | None) -> str:
    return "unknown" if n is None else f"{n:,}"


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def _steps(steps: list[int]) -> str:
    if not steps:
        return "none"
    if len(steps) <= 6:
        return ", ".join(f"{s:,}" for s in steps)
    head = ", ".join(f"{s:,}" for s in steps[:3])
    tail = ", ".join(f"{s:,}" for s in steps[-2:])
    return f"{head}, ..., {tail} ({len(steps)} in all)"


def _every(total: int, every: int) -> list[int]:
    return list(range(every, total + 1, every))


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def _wandb_mode(env: dict[str, str] | os._Environ) -> str:
    # Same rule as qa.tracking.tracker_init_kwargs: no key and no mode means offline, never a prompt.
    if env.get("WANDB_MODE"):
        return f"{env['WANDB_MODE']} (WANDB_MODE)"
    if env.get("WANDB_API_KEY"):
        return "online (WANDB_API_KEY is set)"
    return "offline (neither WANDB_API_KEY nor WANDB_MODE is set here; `wandb sync` uploads later)"


def describe_plan(cfg: TrainConfig, *, world_size: int | None = None, cuda: bool | None = None) -> str:
    """The resolved plan as text; "" on every rank but 0, so a launched dry run prints it once."""
    if _rank() != 0:
        return ""
    import torch

    from qa.modeling import load_deepspeed_config, resolve_precision, zero_stage

    world_size = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() if cuda is None else cuda
    warnings = check_plan(cfg, world_size, cuda)
    precision = resolve_precision(cfg, cuda)
    ds = load_deepspeed_config(cfg, world_size=world_size, precision=precision)
    stage = zero_stage(ds)
    off_opt, off_param = _offload(ds)
    num_params, model_class = count_parameters(cfg)
    counts = count_data(cfg)
    run_name = cfg.resolved_run_name

    lines: list[str] = []

    def section(title: str) -> None:
        lines.append(title)

    def row(key: str, value: str) -> None:
        lines.append(f"  {key:<20} {value}")

    lines.append(f"Dry run for run '{run_name}': nothing is trained, no weights are loaded, nothing is "
                 "written to output_dir.")
    section("launch")
    where = os.environ.get("WORLD_SIZE")
    row("world size", f"{world_size} process(es)" + (" (WORLD_SIZE)" if where else
                                                      " (WORLD_SIZE unset; set it to plan another launch)"))
    row("device", "CUDA GPUs (NCCL)" if cuda else "CPU (gloo)")
    prec_note = ""
    if cfg.mixed_precision == "auto":
        prec_note = " (mixed_precision: auto" + ("" if cuda else "; fp16 when launched on GPUs") + ")"
    row("precision", {"no": "fp32", "fp16": "fp16 mixed precision", "bf16": "bf16 mixed precision"}[precision]
        + prec_note)
    if ds is None:
        row("distribution", "DDP (deepspeed: null), no ZeRO sharding")
    else:
        row("distribution", f"DeepSpeed ZeRO-{stage} from {cfg.deepspeed} (the run config's JSON wins over "
                            "the accelerate config's)")
        row("offload", f"optimizer states -> {off_opt}, parameters -> {off_param}")
        if stage == 3:
            init = os.environ.get("ACCELERATE_DEEPSPEED_ZERO3_INIT", "false").lower() == "true"
            row("ZeRO-3", f"16-bit weights gathered for save_pretrained: "
                f"{'yes' if _gathers_16bit_weights(ds, os.environ) else 'no'}; weights partitioned while "
                f"loading (zero3_init_flag of the accelerate config): {'yes' if init else 'no'}")
    if cfg.torch_compile:
        row("torch.compile", "on")

    section("model")
    row("model", f"{cfg.model_name_or_path}" + (f" ({model_class})" if num_params is not None else ""))
    row("parameters", f"{num_params:,} (Ψ)" if num_params is not None else model_class)
    row("attention", str(cfg.attn_implementation or "model default"))

    section("data")
    for key, want, src, n_ex, n_feat, unknown in (
            ("train", cfg.do_train, cfg.train_file or f"{cfg.dataset_name} train", counts.train_examples,
             counts.train_features, counts.train_unknown),
            ("eval", cfg.do_eval, cfg.validation_file or f"{cfg.dataset_name} validation",
             counts.eval_examples, counts.eval_features, counts.eval_unknown)):
        if not want:
            continue
        if n_feat is None:
            known = f"{n_ex:,} examples -> features " if n_ex is not None else ""
            row(key, f"{src}: {known}{unknown}")
        else:
            row(key, f"{src}: {_int(n_ex)} examples -> {_int(n_feat)} features")
    row("windows", f"max_seq_length {cfg.max_seq_length}, doc_stride {cfg.doc_stride}"
        + (", SQuAD v2 (unanswerable questions)" if cfg.version_2_with_negative else ""))

    section("batch")
    micro, acc = cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps
    global_batch = micro * world_size * acc
    row("per device", f"{micro} train, {cfg.per_device_eval_batch_size} eval")
    row("accumulation", f"{acc} micro-batch(es) per optimizer step")
    row("global batch", f"{global_batch} = {micro} per device x {world_size} process(es) x {acc} accumulation"
        + ("" if cfg.total_train_batch_size is None else " (= total_train_batch_size)"))

    section("schedule")
    sched: Schedule | None = None
    if cfg.do_train and counts.train_features is not None:
        sched = training_schedule(cfg, counts.train_features, world_size)
        row("steps per epoch", f"{sched.steps_per_epoch:,} ({counts.train_features:,} features // "
                               f"{global_batch}; the remainder is dropped)")
        why = " (max_train_steps)" if cfg.max_train_steps is not None \
            else f" (num_train_epochs {cfg.num_train_epochs:g})"
        row("optimizer steps", f"{sched.total_steps:,} over {sched.epochs} epoch(s){why}")
    elif cfg.do_train:
        row("optimizer steps", f"unknown (needs the dataset): features // {global_batch} per epoch x "
                               f"{cfg.num_train_epochs:g} epoch(s)" if cfg.max_train_steps is None
            else f"{cfg.max_train_steps:,} (max_train_steps)")
    else:
        row("optimizer steps", "0 (do_train: false)")
    if cfg.do_train:
        total = sched.total_steps if sched else cfg.max_train_steps
        frac = f" ({cfg.num_warmup_steps / total:.1%} of the run)" if total else ""
        row("learning rate", f"{cfg.learning_rate:g}, {cfg.lr_scheduler_type} schedule, "
                             f"{cfg.num_warmup_steps:,} warmup step(s){frac}")
        if total is not None and cfg.num_warmup_steps > total:
            warnings.append(f"num_warmup_steps ({cfg.num_warmup_steps}) is more than the {total} optimizer "
                            "steps")
    row("evaluation", _eval_line(cfg, sched))
    row("checkpoints", _checkpoint_line(cfg, sched))
    row("preemption", f"SIGTERM/SIGUSR1 -> checkpoint within {cfg.preemption_grace_seconds:g}s, write "
                      "output_dir/PREEMPTED, exit 42 (launch/ scripts requeue)")
    row("resume", _resume_line(cfg))
    row("logging", f"every {cfg.logging_steps} step(s)")

    n = world_size
    section(f"memory per {'GPU' if cuda else 'process'} for model states (ZeRO-{stage}, N = {n}"
            + (f", Ψ = {num_params:,})" if num_params else ")"))
    mixed_states = ds is not None and precision in ("fp16", "bf16")
    est = None
    if num_params is not None:
        est = estimate_memory(num_params, stage=stage, world_size=n, mixed_precision_states=mixed_states,
                              offload_optimizer=off_opt != "none", offload_params=off_param != "none")
    proto = estimate_memory(1, stage=stage, world_size=n, mixed_precision_states=mixed_states,
                            offload_optimizer=off_opt != "none", offload_params=off_param != "none")
    row("formula", proto.formula)
    if est is not None:
        row("parameters", format_bytes(est.params_gpu))
        row("gradients", format_bytes(est.grads_gpu))
        row("optimizer states", format_bytes(est.optimizer_gpu))
        row("total", format_bytes(est.gpu_total) + (f" (+ {format_bytes(est.host)} per rank offloaded to "
                                                      f"{off_opt if off_opt != 'none' else off_param})"
                                                      if est.host else ""))
        others = []
        for s in (0, 1, 2, 3):
            # Any stage above 0 means DeepSpeed, which keeps 16-bit states whenever precision is 16-bit.
            alt = estimate_memory(num_params, stage=s, world_size=n,
                                  mixed_precision_states=precision != "no" and (s > 0 or ds is not None))
            others.append(f"ZeRO-{s} {format_bytes(alt.gpu_total)}")
        row("other stages", ", ".join(others) + " (no offload)")
    else:
        row("total", "unknown (needs the model config for Ψ)")
    if not cuda and cfg.mixed_precision == "auto" and num_params is not None and ds is not None:
        gpu_est = estimate_memory(num_params, stage=stage, world_size=n, mixed_precision_states=True,
                                  offload_optimizer=off_opt != "none", offload_params=off_param != "none")
        row("on GPUs (fp16)", f"{format_bytes(gpu_est.gpu_total)}: mixed_precision auto means fp16 there")
    row("not included", "activations (grow with per-device batch x sequence length; gradient checkpointing "
                        "is off), DeepSpeed communication buckets, ZeRO-3's gathered layers, the CUDA "
                        "context and allocator fragmentation")

    section("outputs")
    row("output_dir", f"{cfg.output_dir} (run_config.yaml, metrics.jsonl; multi-node: a filesystem all "
                      "nodes share)")
    row("checkpoints", f"{cfg.output_dir}/checkpoints/step_NNNNNNN/")
    if cfg.do_train:
        row("final model", f"{cfg.output_dir}/final/ (save_pretrained + tokenizer)")
    if cfg.s3_uri:
        base = f"{cfg.s3_uri.rstrip('/')}/{run_name}"
        row("S3", f"{base}/checkpoints/step_NNNNNNN/" + (f", {base}/final/" if cfg.do_train else "")
            + (f" (SSE {cfg.s3_sse})" if cfg.s3_sse else ""))
    else:
        row("S3", "none (s3_uri not set)")
    if cfg.report_to == "wandb":
        row("W&B", f"project {cfg.wandb_project}, entity {cfg.wandb_entity or '(default)'}, group "
                   f"{cfg.wandb_group or run_name}, run {run_name}; {_wandb_mode(os.environ)}")
    else:
        row("W&B", "off (report_to: none); console and metrics.jsonl only")

    if warnings:
        section("warnings")
        lines.extend(f"  - {w}" for w in warnings)
    return "\n".join(lines)


def _eval_line(cfg: TrainConfig, sched: Schedule | None) -> str:
    if not cfg.do_eval:
        return "off (do_eval: false)"
    parts = ["before training"] if cfg.eval_before_training else []
    if cfg.do_train:
        if cfg.eval_strategy == "steps" and cfg.eval_steps:
            # the last step is not evaluated twice: the final evaluation follows it
            steps = _steps([s for s in _every(sched.total_steps, cfg.eval_steps) if s < sched.total_steps]) \
                if sched else "unknown"
            parts.append(f"every {cfg.eval_steps} steps (steps {steps})")
        elif cfg.eval_strategy == "epoch":
            steps = _steps(sched.epoch_evaluations()) if sched else "unknown"
            parts.append(f"at the end of each epoch but the last (steps {steps})")
        parts.append("after training (final metrics)")
    else:
        parts.append("once (do_train: false)")
    return "; ".join(parts)


def _checkpoint_line(cfg: TrainConfig, sched: Schedule | None) -> str:
    if not cfg.do_train:
        return "none (do_train: false)"
    c = cfg.checkpointing_steps
    if c is None:
        what = "no periodic checkpoints (checkpointing_steps: null)"
    elif c == "epoch":
        steps = _steps(sched.epoch_ends()) if sched else "unknown"
        what = f"at the end of each epoch (steps {steps})"
    else:
        what = f"every {c} steps (steps {_steps(_every(sched.total_steps, c)) if sched else 'unknown'})"
    keep = "all kept" if cfg.save_total_limit is None else f"newest {cfg.save_total_limit} kept"
    export = "; each also exported to model/" if cfg.export_every_checkpoint else ""
    return f"{what}; {keep}{export}"


def _resume_line(cfg: TrainConfig) -> str:
    r = cfg.resume_from_checkpoint
    mode = " (weights only)" if cfg.resume_weights_only \
        else " (model, optimizer, schedule, RNG, data position)"
    if r is None:
        return "start fresh (resume_from_checkpoint: null)"
    if r == "auto":
        where = " else the newest in S3" if cfg.s3_uri else ""
        return f"auto: newest complete checkpoint in {cfg.output_dir}/checkpoints{where}, else fresh{mode}"
    return f"from {r}{mode}"


# ---------------------------------------------------------------------------------------------------------
# launch/ script helper (no torch import: it runs before every launch)
# ---------------------------------------------------------------------------------------------------------


def accelerate_config_for(cfg: TrainConfig, nproc: int, gpu: bool) -> str:
    """The configs/accelerate/ YAML a one-machine launch of ``cfg`` should use ("" when none applies)."""
    if not gpu or cfg.deepspeed is None:
        return ""
    if nproc == 1:
        return str(ACCELERATE_CONFIGS / "1gpu.yaml")
    try:
        z = json.loads(Path(cfg.deepspeed).read_text()).get("zero_optimization", {})
    except (OSError, json.JSONDecodeError):
        z = {}
    offloaded = any(z.get(k, {}).get("device", "none") != "none"
                    for k in ("offload_optimizer", "offload_param"))
    if z.get("stage") == 3:
        return str(ACCELERATE_CONFIGS / ("zero3_offload.yaml" if offloaded else "8gpu_zero3_fp16.yaml"))
    return str(ACCELERATE_CONFIGS / "8gpu_zero2_fp16.yaml")


def launch_info(argv: Sequence[str], *, nproc: int, gpu: bool) -> dict[str, str]:
    cfg = load_config(argv, check_files=False)
    return {"output_dir": cfg.output_dir, "deepspeed": cfg.deepspeed or "",
            "accelerate_config": accelerate_config_for(cfg, nproc, gpu)}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[0] != "launch-info" or not argv[1].isdigit() or argv[2] not in ("0", "1"):
        print("usage: python -m qa.plan launch-info NPROC GPU(0|1) --config FILE.yaml [--key value ...]",
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


def check_launch(cfg: TrainConfig) -> None:
    """Start-up check of the real launch (world size from the launcher's environment); warnings are logged."""
    import logging

    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    for warning in check_plan(cfg, world, torch.cuda.is_available()):
        if _rank() == 0:
            logging.getLogger(__name__).warning(warning)
