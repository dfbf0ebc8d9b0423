"""The invariants every trial of the fault campaign must hold once its job ended (bench/faults.py).

Each check returns a list of violations (empty: it holds); ``check_trial`` runs them all and also returns the
counts the campaign's table adds up (work redone, leaked processes, orphan objects)."""

from __future__ import annotations

import fcntl
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fault_cluster import STEPS, tagged_processes, train_losses
from fault_trial import CORRUPTED, TrialRun

from qa.checkpoint.manager import RUN_RECORD
from qa.checkpoint.manifest import MANIFEST_NAME
from qa.checkpoint.store import CorruptObjectError, StorageError

_RESUMED = re.compile(r"resumed from (\S+) at step (\d+) ")
_SAVED = re.compile(r"checkpoint \S*/(step_\d+) saved in")
_PUBLISHED = re.compile(r"published \S*/(step_\d+):")


@dataclass
class Reference:
    weights: dict[str, Any]
    losses: dict[int, float]


@dataclass
class Verdict:
    violations: list[str] = field(default_factory=list)
    bit_exact: bool = False
    redone: int = 0
    leaked: int = 0
    orphans: int = 0
    resumes: int = 0


def load_weights(final: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(final / "model.safetensors"))


def _same_weights(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def check_result(run: TrialRun, ref: Reference) -> tuple[list[str], bool]:
    final = run.spec.output_dir(0) / "final"
    if not (final / "model.safetensors").is_file():
        return [f"no final model at {final}"], False
    if not _same_weights(load_weights(final), ref.weights):
        return ["final weights differ from the uninterrupted run"], False
    return [], True


def resumed_steps(run: TrialRun) -> list[tuple[int, int]]:
    """(attempt, step it resumed from; 0 for a fresh start) of every attempt after the first."""
    out = []
    for attempt in run.attempts[1:]:
        found = _RESUMED.findall(attempt.log_text())
        out.append((attempt.index, int(found[-1][1]) if found else 0))
    return out


def check_loaded_were_complete(run: TrialRun) -> list[str]:
    """Every checkpoint a resume loaded had been completed (COMPLETE written, logged ``saved``) or published
    (manifest written) by an earlier attempt."""
    bad = []
    for index, step in resumed_steps(run):
        if step == 0:
            continue
        earlier = "\n".join(a.log_text() for a in run.attempts[:index])
        done = {int(n[5:]) for n in _SAVED.findall(earlier) + _PUBLISHED.findall(earlier)}
        if step not in done:
            bad.append(f"attempt {index} loaded step {step}, which no earlier attempt completed or published")
    return bad


def check_metrics(run: TrialRun, ref: Reference) -> tuple[list[str], int]:
    """metrics.jsonl: each step once its last row is taken (a resume rewrites the steps after its checkpoint),
    from 1 (or the resume after node 0's disk was wiped) to the end, every loss bit-equal to the reference.
    Returns the violations and the number of steps trained twice."""
    rows = train_losses(run.spec.output_dir(0) / "metrics.jsonl")
    resumes = dict(resumed_steps(run))
    last = {step: loss for step, loss in rows}
    bad = []
    if not _covers(set(last), first_steps(run)):
        bad.append(f"metrics.jsonl steps {sorted(last)}, expected every step from one of {first_steps(run)} "
                   f"to {STEPS}")
    wrong = [s for s, loss in last.items() if ref.losses.get(s) != loss]
    if wrong:
        bad.append(f"metrics.jsonl losses differ from the uninterrupted run at steps {wrong}")
    redone = 0
    for index, step in resumes.items():
        reached = run.max_step.get(index - 1, 0)
        redone += max(0, reached - step)
    return bad, redone


def first_steps(run: TrialRun) -> list[int]:
    """Where the logs of node 0 may begin: step 1, or, once node 0 was lost with its disk (metrics.jsonl, and
    whatever W&B had not yet written), right after any later attempt's resume point."""
    if not run.wiped_rank0_at:
        return [1]
    lost = run.wiped_rank0_at[-1]
    return sorted({step + 1 for index, step in resumed_steps(run) if index > lost} or {1})


def _covers(steps: set[int], firsts: list[int]) -> bool:
    return steps <= set(range(1, STEPS + 1)) and any(set(range(f, STEPS + 1)) <= steps for f in firsts)


def wandb_dirs(run: TrialRun) -> list[Path]:
    """The trial's W&B offline run directories, one per attempt, oldest first."""
    root = run.spec.root / "wandb0" / "wandb"
    return sorted(p for p in root.glob("offline-run-*") if not p.is_symlink())


def check_wandb(run: TrialRun, ref: Reference) -> list[str]:
    """The W&B offline run: one run id across attempts and, synced in order as ``wandb sync`` does (a step the run
    already has is dropped), every step 1..STEPS once with the uninterrupted run's loss. Attempts may repeat steps:
    a resume sends again what a kill may have kept wandb from writing (its rows are written in batches)."""
    from wandb_records import synced_history

    dirs = wandb_dirs(run)
    ids = {p.name.rsplit("-", 1)[-1] for p in dirs}
    if len(ids) != 1:
        return [f"W&B: {len(ids)} run ids across attempts: {sorted(ids)}"]
    rows = [r for r in synced_history(dirs, ids.pop()) if "train/loss" in r]
    steps = [r["_step_num"] for r in rows]
    bad = []
    if not _covers(set(steps), first_steps(run)) or len(steps) != len(set(steps)):
        bad.append(f"W&B history steps {steps}, expected every step from one of {first_steps(run)} to {STEPS}")
    wrong = [r["_step_num"] for r in rows if ref.losses.get(r["_step_num"]) != r["train/loss"]]
    if wrong:
        bad.append(f"W&B losses differ from the uninterrupted run at steps {wrong}")
    return bad


def check_store(run: TrialRun, store: Any) -> tuple[list[str], int]:
    """Every manifest lists objects that exist and match their hashes (objects the trial corrupted on purpose
    must be refused instead); no object outside a manifest. Returns violations and the orphan count."""
    bad: list[str] = []
    keys = store.list_keys(run.spec.run_name)
    prefixes: dict[str, list[str]] = {}
    orphans = []
    for key in keys:
        parts = key.split("/")
        if len(parts) >= 3 and parts[1] == "checkpoints":
            prefixes.setdefault("/".join(parts[:3]), []).append(key)
        elif len(parts) >= 2 and parts[1] == "final":
            prefixes.setdefault("/".join(parts[:2]), []).append(key)
        elif key == f"{run.spec.run_name}/{RUN_RECORD}":  # the run's tracker id, read by a restart on a new disk
            recorded = (store.read_record(key) or {}).get("tracker_run_id")
            ids = {p.name.rsplit("-", 1)[-1] for p in wandb_dirs(run)}
            if ids and recorded not in ids:
                bad.append(f"{key} holds run id {recorded!r}, W&B ran under {sorted(ids)}")
        else:
            orphans.append(key)
    for prefix, under in sorted(prefixes.items()):
        if f"{prefix}/{MANIFEST_NAME}" not in under:
            orphans += under
            continue
        listed = {f"{prefix}/{rel}" for rel in store.read_manifest(prefix)["files"]}
        orphans += [k for k in under if k not in listed and k != f"{prefix}/{MANIFEST_NAME}"
                    and not k.startswith(f"{prefix}/parts/")]
        # A later attempt that trained to the same step again published it again, intact: only an object that
        # still holds what the trial wrote must be refused.
        corrupted = [k for k in run.corrupted if k in listed and _body(store, k) == CORRUPTED]
        with tempfile.TemporaryDirectory() as tmp:
            try:
                manifest = store.read_manifest(prefix)  # every file re-hashed against it
                store.download_files(prefix, Path(tmp), manifest, list(manifest["files"]))
                if corrupted:
                    bad.append(f"{prefix}: the corrupted {corrupted} downloaded as intact")
            except CorruptObjectError as e:
                if not corrupted:
                    bad.append(f"{prefix}: {e}")
            except StorageError as e:
                bad.append(f"{prefix}: {e}")
    if orphans:
        bad.append(f"{len(orphans)} object(s) no manifest references: {orphans[:4]}")
    return bad, len(orphans)


def _body(store: Any, key: str) -> bytes:
    return store.client.get_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}")["Body"].read()


def check_processes(tag: str, timeout_s: float = 15.0) -> list[Any]:
    """The trial's processes still alive once its launchers exited (given a moment to finish exiting)."""
    deadline = time.monotonic() + timeout_s
    while (alive := tagged_processes(tag)) and time.monotonic() < deadline:
        time.sleep(0.2)  # polling the process table with a deadline
    return alive


def check_locks(outputs: Sequence[Path]) -> list[str]:
    bad = []
    for out in outputs:
        lock = out / ".lock"
        if not lock.exists():
            continue
        with lock.open("a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
            except BlockingIOError:
                bad.append(f"{lock} is still locked")
    return bad


def check_trial(run: TrialRun, ref: Reference, store: Any) -> Verdict:
    v = Verdict(violations=list(run.errors), resumes=len(run.attempts) - 1)
    alive = check_processes(run.spec.tag)
    v.leaked = len(alive)
    if alive:
        v.violations.append(f"{len(alive)} process(es) alive: {[p.pid for p in alive]}")
        for p in alive:
            p.kill()
    v.violations += check_locks([run.spec.output_dir(n) for n in range(run.spec.nodes)])
    if run.errors:
        return v  # the job did not end: the rest would only repeat that
    bad, v.bit_exact = check_result(run, ref)
    v.violations += bad
    v.violations += check_loaded_were_complete(run)
    bad, v.redone = check_metrics(run, ref)
    v.violations += bad
    v.violations += check_wandb(run, ref)
    bad, v.orphans = check_store(run, store)
    v.violations += bad
    return v
