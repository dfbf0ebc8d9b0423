"""W&B through Accelerate's tracker integration: the only module of the project that imports wandb.

wandb is imported inside functions only, so importing this module costs nothing (the dry run does, for
:func:`default_mode`) and a process that never starts a :class:`WandbSink` never loads wandb.

W&B is best-effort: if it cannot start online it is retried once offline; if that fails too, or a call
raises mid-run, one warning is logged (later failures at DEBUG level) and training goes on. Whatever this
module builds itself (init arguments, ``sys.argv``, artifact metadata) goes through :func:`redact`."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qa.tracking.redaction import describe_error, redact, redact_argv

if TYPE_CHECKING:
    from accelerate import Accelerator

logger = logging.getLogger(__name__)

DEFAULT_PROJECT = "squad-qa"
# WANDB_MODE values under which wandb never contacts a server (so there is nothing to fall back from).
_NON_ONLINE_MODES = frozenset({"offline", "dryrun", "disabled"})


def default_mode(environ: Mapping[str, str] | None = None) -> str | None:
    """``"offline"`` when neither ``WANDB_API_KEY`` nor ``WANDB_MODE`` is set, else None (wandb decides).

    A run without credentials is made offline instead of prompting or failing; set ``WANDB_MODE=online``
    to use credentials from ``~/.netrc``. Imports nothing from wandb.
    """
    env = os.environ if environ is None else environ
    return "offline" if not env.get("WANDB_API_KEY") and not env.get("WANDB_MODE") else None


def tracker_init_kwargs(
    *, run_id: str, run_name: str | None = None, entity: str | None = None,
    tags: Sequence[str] | str | None = None, group: str | None = None, resume: bool = False,
    wandb_dir: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """``init_kwargs`` for ``accelerator.init_trackers``: ``{"wandb": {...wandb.init kwargs...}}``.

    * ``id`` is always set, so the run id is known before W&B starts and survives a W&B outage.
    * ``resume="allow"`` when resuming, so the same W&B run continues (or is created if it never
      reached the server).
    * ``group`` defaults to the run name so all attempts of a (multi-node) job group together.
    * ``mode`` is :func:`default_mode` when that is set (no credentials: offline).
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
    mode = default_mode(env)
    if mode is not None:
        kwargs["mode"] = mode
    return {"wandb": kwargs}


def _as_reference_uri(uri: str) -> str:
    # W&B references need a scheme; a bare path is a local checkpoint.
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", uri):
        return uri
    return Path(uri).resolve().as_uri()


def _detect_mode(run: Any) -> str:
    if getattr(run, "disabled", False):
        return "disabled"
    return "offline" if getattr(run, "offline", False) else "online"


def _has_wandb_in_log_with(accelerator: Accelerator) -> bool:
    # log_with holds LoggerType members (str(...) == "wandb") or GeneralTracker instances (.name).
    kinds = getattr(accelerator, "log_with", None) or []
    return any(str(t) == "wandb" or getattr(t, "name", None) == "wandb" for t in kinds)


def _teardown_wandb() -> None:
    try:
        import wandb

        wandb.teardown()
    # wandb.teardown() calls sys.exit() when its service process exited with an error; that must
    # not end the training process.
    except (Exception, SystemExit):
        logger.debug("wandb.teardown() failed", exc_info=True)


class WandbSink:
    """The W&B run of one training run, on the main process only (the caller keeps other ranks away).

    The constructor starts it through ``accelerator.init_trackers`` (the Accelerator must have been made
    with ``log_with="wandb"``). When it could not start, ``active`` is False and every call is a no-op.
    The caller hands over values that are already redacted.

    Attributes:
        mode: ``"online"``, ``"offline"``, ``"disabled"`` (W&B's own mode), or None when it did not start.
        first_step: the first step W&B accepts (later than 0 for a resumed run); earlier ones are dropped.
        sync_command: ``wandb sync ...`` once an offline run has finished, else None.
    """

    def __init__(
        self, accelerator: Accelerator, *, run_id: str, config: dict[str, Any], metrics_path: Path,
        project: str | None = None, entity: str | None = None, run_name: str | None = None,
        tags: Sequence[str] | str | None = None, group: str | None = None, resume: bool = False,
    ) -> None:
        self._accelerator = accelerator
        self.run_id = run_id
        self.mode: str | None = None
        self.first_step = 0
        self.sync_command: str | None = None
        self._metrics_path = metrics_path
        self._run: Any = None
        self._wandb_tracker: Any = None
        self._warned = False
        self._failures = 0
        self._finished = False
        # wandb records sys.argv with the run; a secret passed as a flag must not go with it.
        sys.argv[:] = redact_argv(sys.argv)
        init_kwargs = tracker_init_kwargs(
            run_id=run_id, run_name=run_name, entity=entity, tags=tags, group=group, resume=resume,
            wandb_dir=metrics_path.parent,
        )
        project = project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
        self._start(project, config, redact(init_kwargs["wandb"]))

    @property
    def active(self) -> bool:
        """True while W&B calls are being made (W&B started, not finished)."""
        return self._run is not None and not self._finished

    # ---- starting --------------------------------------------------------------------------------

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

    def _start(self, project: str, config: dict, wandb_kwargs: dict) -> None:
        if not _has_wandb_in_log_with(self._accelerator):
            self._warn(
                "report_to='wandb' but the Accelerator was created without log_with='wandb' "
                "(use log_with_for(report_to)); continuing without W&B"
            )
            return
        requested = wandb_kwargs.get("mode") or os.environ.get("WANDB_MODE") or "online"
        try:
            self._init_trackers(project, config, wandb_kwargs)
        except Exception as first:
            if requested.lower() in _NON_ONLINE_MODES:
                _teardown_wandb()
                self._warn(f"W&B failed to start ({describe_error(first)}); continuing without W&B")
                return
            # The failed online run stays registered in wandb's service process, and a retry with
            # the same id is refused ("run ID ... is in use") until the service is torn down.
            _teardown_wandb()
            try:
                self._init_trackers(project, config, {**wandb_kwargs, "mode": "offline"})
            except Exception as second:
                _teardown_wandb()
                self._warn(
                    f"W&B failed to start online ({describe_error(first)}) and offline "
                    f"({describe_error(second)}); continuing without W&B"
                )
                return
            self._warn(
                f"W&B failed to start online ({describe_error(first)}); logging to an offline run instead "
                f"(upload it later with `wandb sync`)"
            )
        self.mode = _detect_mode(self._run)
        # A resumed online run starts after the last step the server has; W&B drops (with a warning
        # per call) anything older, so those steps are only sent to the console and metrics.jsonl.
        self.first_step = int(getattr(self._run, "step", 0) or 0)
        logger.info("W&B run %s started (%s)", self.run_id, self.mode)

    # ---- failure handling ------------------------------------------------------------------------

    def _warn(self, message: str) -> None:
        (logger.debug if self._warned else logger.warning)(message)
        self._warned = True

    def _guarded(self, what: str, call: Callable[[], Any]) -> None:
        try:
            call()
        except Exception as exc:
            self._failures += 1
            self._warn(
                f"W&B {what} failed ({describe_error(exc)}); training continues and the console and "
                f"{self._metrics_path.name} are unaffected (further W&B errors are logged at DEBUG level)"
            )

    # ---- logging ---------------------------------------------------------------------------------

    def log(self, values: dict[str, Any], step: int) -> None:
        if self.active and step >= self.first_step:
            self._guarded("log", lambda: self._accelerator.log(values, step=step))

    def replay(self, rows: Sequence[tuple[int, dict[str, Any]]]) -> None:
        """Send an earlier attempt's rows (from ``metrics.jsonl``) again, from :attr:`first_step` on.

        wandb writes its records in batches (the offline ``.wandb`` file every 15 s), so a kill loses the rows
        of its last seconds, which no later attempt would send again: a resume re-logs everything after its
        checkpoint, and these rows up to it. A server that already has a step drops it, and ``wandb sync`` of
        offline attempts keeps each step once, the first it met (the values are the same: the resume is exact)."""
        for step, values in rows:
            self.log(values, step)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        if self.active and step >= self.first_step:
            self._guarded(
                "log_table",
                lambda: self._wandb_tracker.log_table(key, columns=columns, data=rows, step=step),
            )

    def log_checkpoint(
        self, step: int, uri: str, aliases: Sequence[str], metadata: Mapping[str, Any] | None
    ) -> None:
        """Summary keys plus a model artifact that *references* ``uri`` (nothing is uploaded or read)."""
        if not self.active:
            return
        self._guarded(
            "summary",
            lambda: self._run.summary.update({"checkpoint/latest_step": step, "checkpoint/latest_uri": uri}),
        )
        self._guarded("log_checkpoint", lambda: self._log_reference_artifact(step, uri, aliases, metadata))

    def _log_reference_artifact(
        self, step: int, uri: str, aliases: Sequence[str], metadata: Mapping[str, Any] | None
    ) -> None:
        import wandb

        metadata = redact({"step": step, "uri": uri, **dict(metadata or {})})
        artifact = wandb.Artifact(name=f"checkpoint-{self.run_id}", type="model", metadata=metadata)
        # checksum=False: checkpoints are large and may still be uploading; W&B only needs their place.
        artifact.add_reference(_as_reference_uri(uri), checksum=False)
        self._run.log_artifact(artifact, aliases=["latest", f"step_{step}", *aliases])

    def summary(self, values: dict[str, Any]) -> None:
        if self.active:
            self._guarded("summary", lambda: self._run.summary.update(values))

    # ---- finishing -------------------------------------------------------------------------------

    def _offline_run_dirs(self) -> list[Path]:
        sync_dir = Path(str(self._run.settings.sync_dir))
        # Every attempt of a resumed offline run gets its own directory (offline-run-<time>-<id>, with
        # a "-N" suffix on a clash); `wandb sync` replays several of them in start-time order.
        pattern = re.compile(rf"^offline-run-\d{{8}}_\d{{6}}-{re.escape(self.run_id)}(-\d+)?$")
        dirs = sorted(p for p in sync_dir.parent.iterdir() if p.is_dir() and pattern.match(p.name))
        return dirs or [sync_dir]

    def finish(self, exit_code: int = 0) -> None:
        """Close the W&B run (idempotent); a non-zero ``exit_code`` marks it failed.

        The W&B trackers are finished directly rather than through ``accelerator.end_training()``,
        which would also destroy the process group (and here only on the main process).
        """
        if self._finished:
            return
        self._finished = True
        if self._run is None:
            return
        run = self._run
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
        # before the sync command is printed.
        _teardown_wandb()
        if self._failures:
            logger.info("%d W&B call(s) failed during this run", self._failures)
        if self.mode == "offline":
            try:
                dirs = self._offline_run_dirs()
            except Exception:  # the hint must not turn a finished run into a crash
                logger.debug("could not list offline run directories", exc_info=True)
                return
            self.sync_command = "wandb sync " + " ".join(str(d) for d in dirs)
