"""Experiment tracking: W&B (through Accelerate's tracker integration), console lines and metrics.jsonl.

Only the main process tracks anything; on the other ranks every method returns at once and wandb is
never imported (this is the only module of the project that imports wandb, and only inside functions).

W&B is best-effort: if it cannot start, or raises mid-run, training goes on, one warning is logged,
and the console and ``metrics.jsonl`` keep working. Everything that leaves the process (W&B, console,
files) goes through :func:`redact` first.

Typical use::

    accelerator = Accelerator(..., log_with=log_with_for(cfg.report_to))
    tracker = Tracker(accelerator, output_dir=cfg.output_dir, report_to=cfg.report_to, ...,
                      config=resolved_config, resume_run_id=run_id_from_checkpoint)
    tracker.log({"train/loss": 1.2, "train/lr": 3e-5}, step=global_step)
    tracker.finish()
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import platform
import re
import secrets
import string
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accelerate import Accelerator

logger = logging.getLogger(__name__)

REDACTED = "***"
METRICS_FILENAME = "metrics.jsonl"
DEFAULT_PROJECT = "squad-qa"
REPORT_TO_CHOICES = ("wandb", "none")
# WANDB_MODE values under which wandb never contacts a server (so there is nothing to fall back from).
_NON_ONLINE_MODES = frozenset({"offline", "dryrun", "disabled"})
# Distributions whose versions are recorded with every run (read from package metadata, so that
# e.g. deepspeed is never imported just to learn its version).
TRACKED_PACKAGES = ("torch", "transformers", "accelerate", "deepspeed", "datasets", "wandb")

# --------------------------------------------------------------------------------------------------
# Secrets
# --------------------------------------------------------------------------------------------------

# Whole words only: "max_tokens", "tokenizer" or "keys" are not secrets, "hub_token" and "apiKey" are.
_SECRET_WORDS = frozenset(
    {
        "key",
        "apikey",
        "token",
        "secret",
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "credential",
        "credentials",
        "auth",
        "authorization",
    }
)
# Tokenizer special tokens are public vocabulary entries ("[PAD]"), not credentials.
_PUBLIC_TOKEN_NAMES = re.compile(r"^(pad|bos|eos|cls|sep|mask|unk|special|additional_special)_tokens?(_id)?$")
# Values shorter than this are not scrubbed from text: replacing "1" or "true" everywhere would mangle
# every log line while protecting nothing a real credential looks like.
_MIN_ENV_SECRET_LEN = 8


def _name_words(name: str) -> list[str]:
    # Split snake_case, kebab-case, dotted paths and camelCase alike ("hubToken" -> hub, token).
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


@functools.lru_cache(maxsize=4096)  # env var names and metric keys repeat on every log call
def is_secret_name(name: str) -> bool:
    """True if a config key or environment variable name looks like it holds a credential."""
    normalized = "_".join(_name_words(name))
    if _PUBLIC_TOKEN_NAMES.match(normalized):
        return False
    return any(word in _SECRET_WORDS for word in _name_words(name))


def secret_env_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables, longest first (so overlapping ones fully go)."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if v and len(v) >= _MIN_ENV_SECRET_LEN and is_secret_name(k)}
    return sorted(values, key=len, reverse=True)


def _scrub_text(text: str, env_secrets: Sequence[str]) -> str:
    for value in env_secrets:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def _redact(obj: Any, env_secrets: Sequence[str], under_secret_key: bool) -> Any:
    if isinstance(obj, str):
        return REDACTED if under_secret_key else _scrub_text(obj, env_secrets)
    if isinstance(obj, bytes):
        return REDACTED if under_secret_key else obj
    if isinstance(obj, os.PathLike):
        return _redact(os.fspath(obj), env_secrets, under_secret_key)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            secret = under_secret_key or (isinstance(key, str) and is_secret_name(key))
            new_key = _scrub_text(key, env_secrets) if isinstance(key, str) else key
            out[new_key] = _redact(value, env_secrets, secret)
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [_redact(v, env_secrets, under_secret_key) for v in obj]
        return items if isinstance(obj, (list, set, frozenset)) else tuple(items)
    # Numbers, bools and None are never credentials, so "max_tokens": 512 or
    # "num_key_value_heads": 8 survive even though their names contain a secret-looking word.
    return obj


def redact(obj: Any, environ: Mapping[str, str] | None = None) -> Any:
    """Return a copy of ``obj`` that is safe to log.

    * Under a key whose name looks secret (see :func:`is_secret_name`), every string (also inside
      nested lists/dicts) becomes ``"***"``; numbers, bools and None are kept because credentials
      are strings and counts such as ``max_tokens`` are useful.
    * Anywhere else, every occurrence of the value of a secret-looking environment variable
      (``AWS_SECRET_ACCESS_KEY``, ``WANDB_API_KEY``, ``HF_TOKEN``...; at least 8 characters) inside a
      string is replaced by ``"***"``.

    Mappings become dicts, dataclasses become dicts, sets become lists; the input is not modified.
    """
    return _redact(obj, secret_env_values(environ), under_secret_key=False)


# --------------------------------------------------------------------------------------------------
# Console formatting
# --------------------------------------------------------------------------------------------------

_KEY_RENAMES = {"learning_rate": "lr"}
_RATE_KEY = re.compile(r"^(?P<unit>.+?)_per_s(?:ec|econd)?$")
_MAX_TEXT_LEN = 40


def _short_key(key: str) -> str:
    # Training metrics are the common case; dropping their prefix keeps the line short while
    # "eval/f1" stays distinguishable from a training metric.
    short = key.removeprefix("train/").removeprefix("perf/")
    return _KEY_RENAMES.get(short, short)


def _format_float(key: str, value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if key == "lr" or key.endswith(("/lr", "_lr")):
        return f"{value:.2e}"
    if "loss" in key:
        return f"{value:.4f}"
    if "grad_norm" in key:
        return f"{value:.3f}"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:.1f}"
    if magnitude >= 1e-3 or value == 0:
        return f"{value:.4g}"
    return f"{value:.2e}"


def _format_item(key: str, value: Any) -> str | None:
    short = _short_key(key)
    rate = _RATE_KEY.match(short)
    if rate and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{float(value):.1f} {rate.group('unit')}/s"
    if isinstance(value, bool):
        return f"{short} {str(value).lower()}"
    if isinstance(value, int):
        return f"{short} {value}"
    if isinstance(value, float):
        return f"{short} {_format_float(short, value)}"
    if isinstance(value, str):
        text = value if len(value) <= _MAX_TEXT_LEN else value[: _MAX_TEXT_LEN - 3] + "..."
        return f"{short} {text}"
    return None  # tables, histograms, None: not console material


def format_console_line(metrics: Mapping[str, Any], step: int) -> str:
    """One compact human-readable line, e.g. ``step 120 | loss 1.2345 | lr 3.00e-05 | 45.2 samples/s``.

    Keys keep their order; ``train/`` is dropped, ``learning_rate`` becomes ``lr``; losses get 4
    decimals, learning rates 2-digit scientific notation, grad norms 3 decimals, ``*_per_sec`` /
    ``*_per_second`` / ``*_per_s`` rates 1 decimal with a unit; non-scalar values are skipped.
    """
    parts = [f"step {step}"]
    for key, value in metrics.items():
        if key in ("step", "time"):
            continue
        item = _format_item(key, value)
        if item is not None:
            parts.append(item)
    return " | ".join(parts)


# --------------------------------------------------------------------------------------------------
# Pure helpers for the caller and for Tracker
# --------------------------------------------------------------------------------------------------


def log_with_for(report_to: str | None) -> str | None:
    """The ``log_with`` argument for ``Accelerator`` that matches a ``report_to`` option."""
    choice = (report_to or "none").strip().lower()
    if choice not in REPORT_TO_CHOICES:
        raise ValueError(f"report_to must be one of {REPORT_TO_CHOICES}, got {report_to!r}")
    return "wandb" if choice == "wandb" else None


def new_run_id() -> str:
    """A fresh run id in W&B's own format (8 lowercase alphanumerics), made without importing wandb."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def tracker_init_kwargs(
    *,
    run_id: str,
    run_name: str | None = None,
    entity: str | None = None,
    tags: Sequence[str] | str | None = None,
    group: str | None = None,
    resume: bool = False,
    wandb_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """``init_kwargs`` for ``accelerator.init_trackers``: ``{"wandb": {...wandb.init kwargs...}}``.

    * ``id`` is always set, so the run id is known before W&B starts and survives a W&B outage.
    * ``resume="allow"`` when resuming, so the same W&B run continues (or is created if it never
      reached the server).
    * ``group`` defaults to the run name so all attempts of a (multi-node) job group together.
    * With neither ``WANDB_API_KEY`` nor ``WANDB_MODE`` in the environment the run is made offline
      instead of prompting or failing; set ``WANDB_MODE=online`` to use credentials from ``~/.netrc``.
    * ``dir`` is only used when ``WANDB_DIR`` is not set (wandb gives the environment precedence
      anyway, and an explicit environment choice should win).
    """
    env = os.environ if environ is None else environ
    kwargs: dict[str, Any] = {"id": run_id}
    if run_name:
        kwargs["name"] = run_name
    if entity:
        kwargs["entity"] = entity
    if isinstance(tags, str):
        tags = [t.strip() for t in tags.split(",")]
    if tags:
        kwargs["tags"] = [t for t in tags if t]
    if group or run_name:
        kwargs["group"] = group or run_name
    if resume:
        kwargs["resume"] = "allow"
    if wandb_dir is not None and not env.get("WANDB_DIR"):
        kwargs["dir"] = os.fspath(wandb_dir)
    if not env.get("WANDB_API_KEY") and not env.get("WANDB_MODE"):
        kwargs["mode"] = "offline"
    return {"wandb": kwargs}


def git_commit(repo_dir: str | os.PathLike[str] | None = None) -> str | None:
    """``git rev-parse HEAD`` of ``repo_dir`` (default: this package's checkout), or None."""
    cwd = Path(repo_dir) if repo_dir is not None else Path(__file__).resolve().parent.parent
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


def _package_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def collect_environment(accelerator: Accelerator, repo_dir: str | os.PathLike[str] | None = None) -> dict:
    """World size, device model, library versions and git commit, for the run's config."""
    import torch

    device = accelerator.device
    if device.type == "cuda" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(device)
    else:
        gpu = "cpu"
    return {
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "mixed_precision": str(accelerator.mixed_precision),
        "gpu": gpu,
        "local_gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "python": platform.python_version(),
        "hostname": platform.node(),
        "versions": {name: _package_version(name) for name in TRACKED_PACKAGES},
        "git_commit": git_commit(repo_dir),
    }


def _scalar(value: Any) -> Any:
    # Callers hand over 0-d tensors / numpy scalars; JSON, the console and W&B all want Python numbers.
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            return value.item()
        except (ValueError, RuntimeError, TypeError):
            return value
    return value


def _jsonable(obj: Any) -> Any:
    # Round-trip through JSON so W&B config gets plain types (Paths, enums, ... become strings).
    return json.loads(json.dumps(redact(obj), default=str))


def _as_reference_uri(uri: str) -> str:
    # W&B references need a scheme; a bare path is a local checkpoint.
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", uri):
        return uri
    return Path(uri).resolve().as_uri()


def _describe(exc: BaseException) -> str:
    # wandb's messages run over several lines (hints, URLs); one short, redacted line is enough here.
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return redact(text if len(text) <= 300 else text[:297] + "...")


def redact_argv(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """Command-line words with the values of secret-looking options (``--x_token V``, ``--x_key=V``) hidden."""
    env_secrets = secret_env_values(environ)
    out: list[str] = []
    hide_next = False
    for word in argv:
        if hide_next:
            out.append("***")
            hide_next = False
            continue
        if word.startswith("--"):
            name, eq, _ = word[2:].partition("=")
            if is_secret_name(name):
                if eq:
                    out.append(f"--{name}=***")
                else:
                    out.append(word)
                    hide_next = True
                continue
        out.append(_scrub_text(word, env_secrets))
    return out


def _last_logged_step(path: Path) -> int:
    last = -1
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                last = max(last, int(json.loads(line).get("step", -1)))
            except (ValueError, AttributeError):
                continue
    return last


def _print_line(line: str) -> None:
    print(line, flush=True)


# --------------------------------------------------------------------------------------------------
# Tracker
# --------------------------------------------------------------------------------------------------


class Tracker:
    """Tracking for one training run; see the module docstring.

    Construct it on every rank at the same point: when more than one process runs, the run id is
    broadcast from the main process (before W&B starts, so a slow W&B cannot stall the collective)
    so that ``run_id`` is the same everywhere. All other methods are no-ops on non-main ranks.

    Attributes:
        run_id: W&B run id (also used when W&B is off); store it in checkpoints and pass it back as
            ``resume_run_id`` to continue the same W&B run.
        mode: ``"online"``, ``"offline"``, ``"disabled"`` (W&B's own mode) or None when W&B is not used.
        metrics_path: ``output_dir/metrics.jsonl`` on the main process, None elsewhere.
        environment: what :func:`collect_environment` found (main process only, else empty).
    """

    def __init__(
        self,
        accelerator: Accelerator,
        *,
        output_dir: str | os.PathLike[str],
        report_to: str | None = "wandb",
        project: str | None = None,
        entity: str | None = None,
        run_name: str | None = None,
        tags: Sequence[str] | str | None = None,
        group: str | None = None,
        config: Mapping[str, Any] | None = None,
        resume_run_id: str | None = None,
        console: Callable[[str], None] | None = None,
    ) -> None:
        use_wandb = log_with_for(report_to) == "wandb"
        self._accelerator = accelerator
        self._is_main = bool(accelerator.is_main_process)
        self._console = console or _print_line
        self.run_id: str = self._agree_on_run_id(resume_run_id or new_run_id())
        self.mode: str | None = None
        self.metrics_path: Path | None = None
        self.environment: dict[str, Any] = {}
        self._run: Any = None
        self._wandb_tracker: Any = None
        self._first_wandb_step = 0
        self._resume_run_id = resume_run_id
        self._wandb_warned = False
        self._wandb_failures = 0
        self._file_warned = False
        self._finished = False
        self._sync_command: str | None = None
        if not self._is_main:
            return

        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.metrics_path = out / METRICS_FILENAME
        try:
            self.environment = redact(collect_environment(accelerator))
        except Exception as exc:  # a probe failing (odd driver, broken git) must not stop training
            logger.warning("could not collect the run environment: %s", _describe(exc))
            self.environment = {"error": _describe(exc)}
        # redact() also turns a config dataclass into a dict.
        base = redact(config) if config is not None else {}
        if not isinstance(base, dict):
            base = {"config": base}
        full_config = _jsonable({**base, "environment": self.environment})
        logger.info(
            "tracking run %s: world_size=%s gpu=%s git=%s",
            self.run_id,
            self.environment.get("world_size"),
            self.environment.get("gpu"),
            self.environment.get("git_commit"),
        )
        if use_wandb:
            # wandb records sys.argv with the run; a secret passed as a flag must not go with it.
            sys.argv[:] = redact_argv(sys.argv)
            init_kwargs = tracker_init_kwargs(
                run_id=self.run_id,
                run_name=run_name,
                entity=entity,
                tags=tags,
                group=group,
                resume=resume_run_id is not None,
                wandb_dir=out,
            )
            project = project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
            self._start_wandb(project, full_config, redact(init_kwargs["wandb"]))

    # ---- setup ------------------------------------------------------------------------------------

    def _agree_on_run_id(self, candidate: str) -> str:
        if self._accelerator.num_processes <= 1:
            return candidate
        from accelerate.utils import broadcast_object_list

        box = [candidate]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def _has_wandb_in_log_with(self) -> bool:
        # log_with holds LoggerType members (str(...) == "wandb") or GeneralTracker instances (.name).
        return any(
            str(t) == "wandb" or getattr(t, "name", None) == "wandb"
            for t in getattr(self._accelerator, "log_with", None) or []
        )

    def _init_trackers(self, project: str, config: dict, wandb_kwargs: dict) -> None:
        acc = self._accelerator
        before = list(acc.trackers)
        try:
            acc.init_trackers(project, config=config, init_kwargs={"wandb": wandb_kwargs})
        except Exception:
            # init_trackers appends the tracker before starting it; a half-made one would make every
            # later accelerator.log raise, and a retry would append a second one.
            acc.trackers = before
            raise
        self._wandb_tracker = acc.get_tracker("wandb")
        self._run = self._wandb_tracker.tracker

    def _start_wandb(self, project: str, config: dict, wandb_kwargs: dict) -> None:
        if not self._has_wandb_in_log_with():
            self._warn_wandb(
                "report_to='wandb' but the Accelerator was created without log_with='wandb' "
                "(use log_with_for(report_to)); continuing without W&B"
            )
            return
        requested = wandb_kwargs.get("mode") or os.environ.get("WANDB_MODE") or "online"
        try:
            self._init_trackers(project, config, wandb_kwargs)
        except Exception as first:
            if requested.lower() in _NON_ONLINE_MODES:
                self._teardown_wandb()
                self._warn_wandb(f"W&B failed to start ({_describe(first)}); continuing without W&B")
                return
            # The failed online run stays registered in wandb's service process, and a retry with
            # the same id is refused ("run ID ... is in use") until the service is torn down.
            self._teardown_wandb()
            try:
                self._init_trackers(project, config, {**wandb_kwargs, "mode": "offline"})
            except Exception as second:
                self._teardown_wandb()
                self._warn_wandb(
                    f"W&B failed to start online ({_describe(first)}) and offline ({_describe(second)}); "
                    "continuing without W&B"
                )
                return
            self._warn_wandb(
                f"W&B failed to start online ({_describe(first)}); logging to an offline run instead "
                f"(upload it later with `wandb sync`)"
            )
        self.mode = self._detect_mode(self._run)
        # A resumed online run starts after the last step the server has; W&B drops (with a warning
        # per call) anything older, so those steps are only sent to the console and metrics.jsonl.
        self._first_wandb_step = int(getattr(self._run, "step", 0) or 0)
        if self._resume_run_id is not None:
            # A resume rolls back to the last checkpoint; the steps an earlier attempt already logged
            # stay as they are (an exact resume recomputes the same values), so the W&B step axis has
            # neither repeats nor gaps. metrics.jsonl keeps every attempt's lines.
            last = _last_logged_step(self.metrics_path) if self.metrics_path is not None else -1
            self._first_wandb_step = max(self._first_wandb_step, last + 1)
        logger.info("W&B run %s started (%s)", self.run_id, self.mode)

    @staticmethod
    def _detect_mode(run: Any) -> str:
        if getattr(run, "disabled", False):
            return "disabled"
        if getattr(run, "offline", False):
            return "offline"
        return "online"

    @staticmethod
    def _teardown_wandb() -> None:
        try:
            import wandb

            wandb.teardown()
        # wandb.teardown() calls sys.exit() when its service process exited with an error; that must
        # not end the training process.
        except (Exception, SystemExit):
            logger.debug("wandb.teardown() failed", exc_info=True)

    # ---- failure handling ------------------------------------------------------------------------

    @property
    def wandb_active(self) -> bool:
        """True while W&B calls are being made (main process, W&B started, not finished)."""
        return self._run is not None and not self._finished

    def _warn_wandb(self, message: str) -> None:
        if self._wandb_warned:
            logger.debug(message)
        else:
            self._wandb_warned = True
            logger.warning(message)

    def _guarded(self, what: str, call: Callable[[], Any]) -> None:
        try:
            call()
        except Exception as exc:
            self._wandb_failures += 1
            self._warn_wandb(
                f"W&B {what} failed ({_describe(exc)}); training continues and the console and "
                f"{METRICS_FILENAME} are unaffected (further W&B errors are logged at DEBUG level)"
            )

    # ---- logging ---------------------------------------------------------------------------------

    def _write_metrics_line(self, record: Mapping[str, Any]) -> None:
        assert self.metrics_path is not None
        line = json.dumps(record, default=str, separators=(",", ":"))
        try:
            # Opened per call and closed at once: each record reaches the OS immediately, so a crash
            # (or a kill by the scheduler) loses nothing already logged.
            with self.metrics_path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError as exc:
            if not self._file_warned:
                self._file_warned = True
                logger.warning(
                    "cannot append to %s (%r); metrics go to the console only", self.metrics_path, exc
                )

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log scalar metrics for ``step`` to the console, metrics.jsonl and W&B (main process only)."""
        if not self._is_main:
            return
        values = redact({k: _scalar(v) for k, v in metrics.items()})
        record = {"step": step, "time": round(time.time(), 3)}
        record.update((k, v) for k, v in values.items() if k not in record)
        self._write_metrics_line(record)
        self._console(redact(format_console_line(values, step)))
        if self.wandb_active and step >= self._first_wandb_step:
            self._guarded("log", lambda: self._accelerator.log(values, step=step))

    def log_table(
        self, key: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], step: int
    ) -> None:
        """Log a W&B table (e.g. eval samples) at ``step``; W&B only, cells are redacted."""
        if not self._is_main or not self.wandb_active or step < self._first_wandb_step:
            return
        safe_columns = [str(c) for c in redact(list(columns))]
        safe_rows = [list(row) for row in redact([[_scalar(c) for c in row] for row in rows])]
        self._guarded(
            "log_table",
            lambda: self._wandb_tracker.log_table(key, columns=safe_columns, data=safe_rows, step=step),
        )

    def log_checkpoint(
        self,
        step: int,
        uri: str,
        *,
        aliases: Sequence[str] = (),
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a saved checkpoint: run summary plus a W&B artifact that *references* ``uri``.

        Nothing is uploaded and the checkpoint is not read (``checksum=False``): checkpoints are
        large, may still be uploading, and W&B only needs to know where they are.
        """
        if not self._is_main:
            return
        safe_uri = redact(uri)
        self._console(f"checkpoint step {step} -> {safe_uri}")
        if not self.wandb_active:
            return
        self._guarded(
            "summary",
            lambda: self._run.summary.update(
                {"checkpoint/latest_step": step, "checkpoint/latest_uri": safe_uri}
            ),
        )
        self._guarded(
            "log_checkpoint", lambda: self._log_reference_artifact(step, safe_uri, aliases, metadata)
        )

    def _log_reference_artifact(
        self, step: int, uri: str, aliases: Sequence[str], metadata: Mapping[str, Any] | None
    ) -> None:
        import wandb

        artifact = wandb.Artifact(
            name=f"checkpoint-{self.run_id}",
            type="model",
            metadata=redact({"step": step, "uri": uri, **dict(metadata or {})}),
        )
        artifact.add_reference(_as_reference_uri(uri), checksum=False)
        self._run.log_artifact(artifact, aliases=["latest", f"step_{step}", *aliases])

    def summary(self, values: Mapping[str, Any]) -> None:
        """Set run-summary values (best scores, totals); also printed once to the console."""
        if not self._is_main:
            return
        safe = redact({k: _scalar(v) for k, v in values.items()})
        self._console(redact("summary: " + ", ".join(f"{k}={v}" for k, v in safe.items())))
        if self.wandb_active:
            self._guarded("summary", lambda: self._run.summary.update(safe))

    # ---- teardown --------------------------------------------------------------------------------

    @property
    def sync_command(self) -> str | None:
        """``wandb sync ...`` for this run's offline directories once an offline run has finished."""
        return self._sync_command

    def _offline_run_dirs(self) -> list[Path]:
        sync_dir = Path(str(self._run.settings.sync_dir))
        # Every attempt of a resumed offline run gets its own directory (offline-run-<time>-<id>, with
        # a "-N" suffix on a clash); `wandb sync` replays several of them in start-time order.
        pattern = re.compile(rf"^offline-run-\d{{8}}_\d{{6}}-{re.escape(self.run_id)}(-\d+)?$")
        dirs = sorted(p for p in sync_dir.parent.iterdir() if p.is_dir() and pattern.match(p.name))
        return dirs or [sync_dir]

    def finish(self, exit_code: int = 0) -> None:
        """Close the W&B run (idempotent). A non-zero ``exit_code`` marks the W&B run as failed.

        The W&B trackers are finished directly rather than through ``accelerator.end_training()``,
        which would also destroy the process group (and here only on the main process).
        """
        if not self._is_main or self._finished:
            return
        self._finished = True
        if self._run is None:
            return
        run = self._run
        offline = self.mode == "offline"
        trackers = [t for t in self._accelerator.trackers if t.name == "wandb"]
        self._accelerator.trackers = [t for t in self._accelerator.trackers if t.name != "wandb"]

        def close() -> None:
            if exit_code:
                run.finish(exit_code=exit_code)
            else:
                for tracker in trackers:
                    tracker.finish()

        self._guarded("finish", close)
        # run.finish() can return before wandb's service process has flushed the run's files (seen
        # with offline runs); tearing the service down waits for it, so the files are complete
        # before the sync command below is printed.
        self._teardown_wandb()
        if self._wandb_failures:
            logger.info("%d W&B call(s) failed during this run", self._wandb_failures)
        if offline:
            try:
                dirs = self._offline_run_dirs()
            except Exception:  # the hint must not turn a finished run into a crash
                logger.debug("could not list offline run directories", exc_info=True)
                return
            self._sync_command = "wandb sync " + " ".join(str(d) for d in dirs)
            self._console(f"W&B run {self.run_id} was logged offline; upload it with: {self._sync_command}")

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.finish(exit_code=1 if exc_type is not None else 0)
