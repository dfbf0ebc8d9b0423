"""One run per output directory: another run's results are refused, a live run's directory is locked.

A fresh run (``resume_from_checkpoint: null``) into a directory that already holds checkpoints or a final model
would mix its files with the earlier run's, and its checkpoint rotation would delete the earlier run's
checkpoints. So it is refused, unless ``--resume_from_checkpoint auto`` continues that run or
``--overwrite_output_dir`` moves the whole directory aside (to ``<output_dir>.old-<UTC time>``: nothing is
deleted; remove it yourself once you no longer need it). A second run on a directory that a live run holds is
refused whatever the flags: two runs would write the same checkpoint names.

The lock is ``fcntl.flock`` on ``output_dir/.lock``, held by the main process for its lifetime and released by
the kernel when it exits, however it exits, so a lock left by a dead run is simply taken over. The file also
records the holder's pid and host, for the message. Where the filesystem has no flock (some network mounts), the
pid and host are checked instead: a live pid on this host is refused, anything else is taken over.

Every check here runs on rank 0 before anything is written to the output directory and its verdict is
broadcast, so every rank stops with the same one-line error (no rank waits in a collective for a peer that left).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from qa.checkpoint.state import STATE_FILE, TrainState
from qa.distributed.rank_zero import on_rank_zero
from qa.errors import ConfigError, UserError

if TYPE_CHECKING:
    from accelerate import Accelerator

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"
# The process-lifetime lock (rank 0 only); kept here so the descriptor is never garbage-collected and closed.
_held: dict[str, int] = {}


def previous_run(output_dir: Path) -> list[str]:
    """What in ``output_dir`` a training run left behind: its checkpoints and its final model."""
    found = sorted(str(p.relative_to(output_dir)) for p in (output_dir / "checkpoints").glob("step_*"))
    if (output_dir / "final").exists():
        found.append("final")
    return found


def _has_contents(output_dir: Path) -> bool:
    return output_dir.is_dir() and any(p.name != LOCK_FILE for p in output_dir.iterdir())


def _summary(items: list[str]) -> str:
    return ", ".join(items) if len(items) <= 3 else f"{', '.join(items[:2])}, ... ({len(items)} in all)"


def _inside(path: str | None, directory: Path) -> bool:
    if not path:
        return False
    p = Path(path)
    return p.exists() and (p.resolve() == directory.resolve() or directory.resolve() in p.resolve().parents)


@dataclass(frozen=True)
class OutputDirUse:
    """How a run means to use its output_dir: built from the run, checkpoint and input keys (qa.preflight)."""

    output_dir: Path
    overwrite_output_dir: bool
    resume_from_checkpoint: str | None
    do_train: bool
    inputs: Mapping[str, str | None]  # key -> a path the run reads, which must not be moved aside


def check_output_dir(use: OutputDirUse) -> None:
    """Refuse a run that would mix its files with another run's; read-only (the dry run calls it too)."""
    out = Path(use.output_dir)
    if use.overwrite_output_dir and use.resume_from_checkpoint is not None:
        # Moving the directory aside would move the checkpoint the run is about to resume from; under a
        # requeueing launcher (SLURM adds --resume_from_checkpoint auto) it would discard every attempt.
        raise ConfigError(f"overwrite_output_dir: cannot be combined with resume_from_checkpoint "
                          f"{use.resume_from_checkpoint!r}; to start over pass --resume_from_checkpoint null "
                          "--overwrite_output_dir")
    if use.overwrite_output_dir:
        for key, path in use.inputs.items():
            if _inside(path, out) and _has_contents(out):
                raise ConfigError(f"overwrite_output_dir: {key} {path} lies inside output_dir "
                                  f"{out}, which would be moved aside; copy it elsewhere first")
        return
    if use.resume_from_checkpoint is not None or not use.do_train:
        return  # resuming continues the run that is there; evaluation writes no checkpoints or final model
    found = previous_run(out)
    if found:
        raise ConfigError(
            f"output_dir: {out} already holds another run ({_summary(found)}); pass --resume_from_checkpoint "
            "auto to continue it, or --overwrite_output_dir to move it aside and start fresh, or choose another "
            "--output_dir")


def check_resume_step(max_train_steps: int | None, resume_path: Path | None) -> None:
    """A checkpoint past max_train_steps would train backwards into a finished schedule: refuse it."""
    if resume_path is None or max_train_steps is None:
        return
    state_file = Path(resume_path) / STATE_FILE
    if not state_file.is_file():
        return  # the checkpointer reports a checkpoint without its state
    step = TrainState.from_file(state_file).global_step
    if step > max_train_steps:
        raise ConfigError(
            f"resume_from_checkpoint: {resume_path} is at step {step}, past max_train_steps "
            f"{max_train_steps}; raise --max_train_steps to at least {step} or start a new run in another "
            "--output_dir")


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 256).decode(errors="replace").strip()


def _describe(holder: str) -> str:
    pid, _, host = holder.partition(" ")
    return f"pid {pid} on host {host}" if pid.isdigit() and host else "another process"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock(path: Path, *, create: bool) -> int | None:
    """The descriptor of ``path`` with our exclusive lock on it; None when ``path`` does not exist yet."""
    import fcntl  # Unix only, like the launchers

    try:
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise ConfigError(
            f"output_dir: {path.parent} is in use by a live run ({_describe(holder)}, lock {path}); wait for it "
            "to finish or stop it, or choose another --output_dir") from None
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            os.close(fd)
            raise
        # No flock on this filesystem: the recorded pid decides, as far as this host can tell.
        holder = _holder(fd)
        pid, _, host = holder.partition(" ")
        if pid.isdigit() and host == socket.gethostname() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            os.close(fd)
            raise ConfigError(f"output_dir: {path.parent} is in use by a live run ({_describe(holder)}, lock "
                              f"{path}); wait for it to finish or stop it, or choose another --output_dir") from None
        logger.warning("output_dir: %s has no file locking (%s); relying on the pid in %s", path.parent, e, path)
    return fd


def _record(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())


def claim(use: OutputDirUse) -> Path | None:
    """Rank 0: check, lock, and (with overwrite_output_dir) move an earlier run aside. Returns where it went."""
    out = Path(use.output_dir)
    fd = _lock(out / LOCK_FILE, create=False)  # a live run refuses us before anything else is looked at
    try:
        check_output_dir(use)
    except UserError:
        if fd is not None:
            os.close(fd)
        raise
    moved = None
    if use.overwrite_output_dir and _has_contents(out):
        moved = out.with_name(f"{out.name}.old-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
        n = 1
        while moved.exists():
            moved = moved.with_name(f"{moved.name.split('~')[0]}~{n}")
            n += 1
        out.rename(moved)  # the old lock file goes with it; our descriptor still locks that file, released below
        if fd is not None:
            os.close(fd)
            fd = None
    out.mkdir(parents=True, exist_ok=True)
    if fd is None:
        fd = _lock(out / LOCK_FILE, create=True)
    assert fd is not None
    _record(fd)
    _held[str(out.resolve())] = fd
    return moved


def release(output_dir: str | os.PathLike) -> None:
    """Let go of the lock before the process ends (tests, or a run that hands the directory on)."""
    fd = _held.pop(str(Path(output_dir).resolve()), None)
    if fd is not None:
        os.close(fd)


def abandon(output_dir: str | os.PathLike) -> None:
    """A start-up that failed on the user's input leaves no trace: drop our lock, and the directory if empty."""
    out = Path(output_dir)
    if str(out.resolve()) not in _held:
        return
    release(out)
    (out / LOCK_FILE).unlink(missing_ok=True)
    try:
        out.rmdir()  # only when empty: anything else there was not ours to remove
    except OSError:
        pass


def claim_output_dir(use: OutputDirUse, accelerator: Accelerator) -> None:
    """Collective: refuse another run's or a live run's directory, else lock it (rank 0) for this run."""
    moved = on_rank_zero(accelerator, lambda: claim(use))
    if moved is not None and accelerator.is_main_process:
        logger.warning("overwrite_output_dir: the earlier run in %s was moved to %s", use.output_dir, moved)


def check_resume_target(max_train_steps: int | None, resume_path: Path | None, accelerator: Accelerator) -> None:
    """Collective: refuse a resume checkpoint past max_train_steps (read on rank 0)."""
    on_rank_zero(accelerator, lambda: check_resume_step(max_train_steps, resume_path))
