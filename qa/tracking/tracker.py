"""Experiment tracking: one call fans out to the console, ``metrics.jsonl`` and W&B (:class:`WandbSink`).

Only the main process tracks anything; on the other ranks every method returns at once and wandb is
never imported. W&B is best-effort (see :mod:`qa.tracking.wandb_sink`): whatever happens to it, the
console and ``metrics.jsonl`` keep working. Everything that leaves the process goes through
:func:`redact` first.

Typical use::

    accelerator = Accelerator(..., log_with=log_with_for(settings.report_to))
    tracker = Tracker.from_settings(accelerator, settings, config=resolved_config,
                                    resume_run_id=run_id_from_checkpoint)
    tracker.log({"train/loss": 1.2, "train/lr": 3e-5}, step=global_step)
    tracker.finish()"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import string
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qa.files import atomic_write_text
from qa.tracking.console import format_console_line
from qa.tracking.environment import collect_environment
from qa.tracking.redaction import describe_error, redact
from qa.tracking.settings import TrackingSettings
from qa.tracking.wandb_sink import WandbSink

if TYPE_CHECKING:
    from accelerate import Accelerator

logger = logging.getLogger(__name__)

METRICS_FILENAME = "metrics.jsonl"
RUN_ID_FILENAME = "tracker_run_id"  # beside metrics.jsonl: the run id of this output_dir's run
REPORT_TO_CHOICES = ("wandb", "none")


def log_with_for(report_to: str | None) -> str | None:
    """The ``log_with`` argument for ``Accelerator`` that matches a ``report_to`` option."""
    choice = (report_to or "none").strip().lower()
    if choice not in REPORT_TO_CHOICES:
        raise ValueError(f"report_to must be one of {REPORT_TO_CHOICES}, got {report_to!r}")
    return "wandb" if choice == "wandb" else None


def _earlier_run_id(output_dir: Path) -> str | None:
    """The run id an earlier attempt in ``output_dir`` used, if it left one."""
    try:
        text = (output_dir / RUN_ID_FILENAME).read_text().strip()
    except OSError:
        return None
    return text if re.fullmatch(r"[a-z0-9]{8}", text) else None


def _rows_up_to(path: Path, last_step: int) -> list[tuple[int, dict[str, Any]]]:
    """``metrics.jsonl``'s values for each step up to ``last_step``, in step order (later lines win: a resume
    rewrites the steps after its checkpoint, with the same values)."""
    rows: dict[int, dict[str, Any]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
            step = int(record.pop("step"))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a line cut short by a kill
        record.pop("time", None)
        if step <= last_step:
            rows.setdefault(step, {}).update(record)
    return sorted(rows.items())


def new_run_id() -> str:
    """A fresh run id in W&B's own format (8 lowercase alphanumerics), made without importing wandb."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


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


def _environment(accelerator: Accelerator, facts: Mapping[str, Any] | None) -> dict[str, Any]:
    try:
        environment = redact(collect_environment(accelerator))
    except Exception as exc:  # a probe failing (odd driver, broken git) must not stop training
        logger.warning("could not collect the run environment: %s", describe_error(exc))
        environment = {"error": describe_error(exc)}
    environment.update(facts or {})  # what the run decided from the machine (precision, threads) and why
    return environment


def _print_line(line: str) -> None:
    print(line, flush=True)


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

    @classmethod
    def from_settings(cls, accelerator: Accelerator, settings: TrackingSettings, *, output_dir: str,
                      run_name: str, group: str, config: Mapping[str, Any] | None = None,
                      resume_run_id: str | None = None, stored_run_id: str | None = None,
                      resume_step: int = 0, console: Callable[[str], None] | None = None,
                      facts: Mapping[str, Any] | None = None) -> Tracker:
        """Collective: every rank calls it. The tracker of the run config's tracking section."""
        return cls(accelerator, output_dir=output_dir, report_to=settings.report_to,
                   project=settings.wandb_project, entity=settings.wandb_entity, run_name=run_name,
                   tags=settings.wandb_tags, group=group, config=config, resume_run_id=resume_run_id,
                   stored_run_id=stored_run_id, resume_step=resume_step, console=console, facts=facts)

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
        stored_run_id: str | None = None,
        resume_step: int = 0,
        console: Callable[[str], None] | None = None,
        facts: Mapping[str, Any] | None = None,
    ) -> None:
        """Collective: every rank calls it (they agree on the run id).

        ``resume_run_id``: the run id of the checkpoint this run resumes from; ``stored_run_id``: the one the run
        kept in its store, used when neither a checkpoint nor ``output_dir`` has one (a node lost with its disk);
        ``resume_step``: the checkpoint's step, up to which ``metrics.jsonl``'s rows are sent to W&B again (see
        :meth:`WandbSink.replay`)."""
        use_wandb = log_with_for(report_to) == "wandb"
        self._accelerator = accelerator
        self._is_main = bool(accelerator.is_main_process)
        self._console = console or _print_line
        # A run that restarts before any checkpoint (a crash, a kill, a preemption before the first save) starts
        # its training afresh but in the same output_dir: it continues the same W&B run, not a second one.
        earlier = (_earlier_run_id(Path(output_dir)) or stored_run_id) if self._is_main and resume_run_id is None \
            else None
        self.run_id: str = self._agree_on_run_id(resume_run_id or earlier or new_run_id())
        continues = resume_run_id is not None or self.run_id == earlier
        self.mode: str | None = None
        self.metrics_path: Path | None = None
        self.environment: dict[str, Any] = {}
        self._sink: WandbSink | None = None
        self._file_warned = False
        self._finished = False
        if not self._is_main:
            return

        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.metrics_path = out / METRICS_FILENAME
        atomic_write_text(out / RUN_ID_FILENAME, self.run_id + "\n")
        self.environment = _environment(accelerator, facts)
        logger.info("tracking run %s: world_size=%s gpu=%s git=%s", self.run_id, self.environment.get("world_size"),
                    self.environment.get("gpu"), self.environment.get("git_commit"))
        if use_wandb:
            self._sink = self._open_wandb(config, self.metrics_path, resume=continues, resume_step=resume_step,
                                          project=project, entity=entity, run_name=run_name, tags=tags, group=group)
            self.mode = self._sink.mode

    def _open_wandb(self, config: Mapping[str, Any] | None, metrics_path: Path, *, resume: bool, resume_step: int,
                    **names: Any) -> WandbSink:
        """Rank 0: the W&B run, its config with the environment added; a continued run gets its rows again."""
        base = redact(config) if config is not None else {}  # redact() also turns a dataclass into a dict
        full_config = _jsonable({**(base if isinstance(base, dict) else {"config": base}),
                                 "environment": self.environment})
        sink = WandbSink(self._accelerator, run_id=self.run_id, config=full_config, metrics_path=metrics_path,
                         resume=resume, **names)
        if resume:
            sink.replay(_rows_up_to(metrics_path, resume_step))
        return sink

    def _agree_on_run_id(self, candidate: str) -> str:
        from qa.distributed.rank_zero import broadcast_from_rank_zero

        return broadcast_from_rank_zero(self._accelerator, candidate)

    @property
    def wandb_active(self) -> bool:
        """True while W&B calls are being made (main process, W&B started, not finished)."""
        return self._sink is not None and self._sink.active

    @property
    def sync_command(self) -> str | None:
        """``wandb sync ...`` for this run's offline directories once an offline run has finished."""
        return self._sink.sync_command if self._sink is not None else None

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
        if self._sink is not None:
            self._sink.log(values, step)

    def log_table(
        self, key: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], step: int
    ) -> None:
        """Log a W&B table (e.g. eval samples) at ``step``; W&B only, cells are redacted."""
        sink = self._sink
        if not self._is_main or sink is None or not sink.active or step < sink.first_step:
            return
        safe_columns = [str(c) for c in redact(list(columns))]
        safe_rows = [list(row) for row in redact([[_scalar(c) for c in row] for row in rows])]
        sink.log_table(key, safe_columns, safe_rows, step)

    def log_checkpoint(
        self,
        step: int,
        uri: str,
        *,
        aliases: Sequence[str] = (),
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a saved checkpoint: a console line, the run summary and a W&B artifact that *references*
        ``uri`` (nothing is uploaded and the checkpoint is not read)."""
        if not self._is_main:
            return
        safe_uri = redact(uri)
        self._console(f"checkpoint step {step} -> {safe_uri}")
        if self._sink is not None:
            self._sink.log_checkpoint(step, safe_uri, aliases, metadata)

    def summary(self, values: Mapping[str, Any]) -> None:
        """Set run-summary values (best scores, totals); also printed once to the console."""
        if not self._is_main:
            return
        safe = redact({k: _scalar(v) for k, v in values.items()})
        self._console(redact("summary: " + ", ".join(f"{k}={v}" for k, v in safe.items())))
        if self._sink is not None:
            self._sink.summary(safe)

    # ---- teardown --------------------------------------------------------------------------------

    def finish(self, exit_code: int = 0) -> None:
        """Close the W&B run (idempotent). A non-zero ``exit_code`` marks the W&B run as failed."""
        if not self._is_main or self._finished:
            return
        self._finished = True
        if self._sink is None:
            return
        self._sink.finish(exit_code)
        command = self._sink.sync_command
        if command is not None:
            self._console(f"W&B run {self.run_id} was logged offline; upload it with: {command}")

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.finish(exit_code=1 if exc_type is not None else 0)
