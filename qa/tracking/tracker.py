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
    tracker.finish()"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import string
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accelerate import Accelerator

from qa.tracking.console import format_console_line
from qa.tracking.environment import collect_environment
from qa.tracking.redaction import _scrub_text, is_secret_name, redact, secret_env_values

logger = logging.getLogger(__name__)

REDACTED = "***"
METRICS_FILENAME = "metrics.jsonl"
DEFAULT_PROJECT = "squad-qa"
REPORT_TO_CHOICES = ("wandb", "none")
# WANDB_MODE values under which wandb never contacts a server (so there is nothing to fall back from).
_NON_ONLINE_MODES = frozenset({"offline", "dryrun", "disabled"})


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
        from qa.distributed.rank_zero import broadcast_from_rank_zero

        return broadcast_from_rank_zero(self._accelerator, candidate)

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
