"""One seeded trial of the fault campaign: its plan (which faults, at which moments) drawn from the trial's seed
alone, then run: launch, wait for the moment, inject, resume with ``--resume_from_checkpoint auto``, until the job
ends. The invariants are checked afterwards (fault_checks.py)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fault_cluster import STEPS, Attempt, JobSpec, train_losses

CORRUPTED = b"corrupted by the fault campaign"  # what an object the trial corrupted holds until it is rewritten
KINDS = ("kill_worker", "kill_launcher", "sigterm", "sigint", "s3_outage", "wipe_disk", "full_disk", "corrupt_object")
# Moments: a time after the launch (start-up and a resume's download included), a training step, a save in
# progress (a step directory without COMPLETE), an upload in progress (objects without a manifest), a manifest
# just published (the store's rotation runs right after), a resume's download in progress (*.part files).
MOMENTS = ("time", "step", "saving", "uploading", "published", "fetching")
ATTEMPT_TIMEOUT_S = 420.0
# After a fault that took a node away, how long the other node may take to notice and exit by itself (torchrun
# waits up to 600 s for a node to rejoin its rendezvous); then it is killed, as a scheduler restarting the job
# would. Longer than a preemption save (preemption_grace_seconds 110) with room for a loaded machine.
SURVIVORS_S = 240.0


@dataclass
class Fault:
    kind: str
    moment: str
    value: float  # seconds for "time", a step for "step", unused otherwise
    node: int  # which node (or, for kill_worker, which rank) it hits
    hold_s: float  # outage / full disk duration


@dataclass
class Plan:
    seed: int
    mode: str
    faults: list[Fault]

    def describe(self) -> str:
        return f"{self.mode}: " + ", ".join(f"{f.kind}@{f.moment}" for f in self.faults)


def draw_plan(seed: int) -> Plan:
    """The trial's plan, from its seed alone (a failing seed replays the same plan)."""
    rng = random.Random(seed)
    mode = rng.choice(["single", "nodes"])
    kinds = list(KINDS)  # without a disk to fill, a full_disk fault is drawn all the same, and missed
    faults = []
    for _ in range(rng.randint(1, 3)):
        kind, moment = rng.choice(kinds), rng.choice(MOMENTS)
        value = rng.uniform(1.0, 40.0) if moment == "time" else float(rng.randint(1, STEPS - 1))
        faults.append(Fault(kind, moment, round(value, 2), rng.randint(0, 1), round(rng.uniform(0.5, 12.0), 2)))
    return Plan(seed, mode, faults)


@dataclass
class TrialRun:
    """What happened: the attempts' exit codes, the faults injected (or missed: the run ended first), what the
    trial itself did to the store and disks (the checks must know), and what went wrong."""

    plan: Plan
    spec: JobSpec
    attempts: list[Attempt] = field(default_factory=list)
    injected: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    corrupted: list[str] = field(default_factory=list)  # store keys the trial overwrote on purpose
    wiped_rank0_at: list[int] = field(default_factory=list)  # attempt indices after which node 0's disk was empty
    max_step: dict[int, int] = field(default_factory=dict)  # attempt -> the last step it logged
    restarted_by_scheduler: int = 0  # attempts whose surviving node was killed after a node loss
    errors: list[str] = field(default_factory=list)


class Injector:
    """Waits for a fault's moment while the attempt runs, then injects it."""

    def __init__(self, run: TrialRun, store: Any, server: Any, disks: Any) -> None:
        self.run, self.store, self.server, self.disks = run, store, server, disks
        self.prefix = f"{run.spec.run_name}/checkpoints"

    # -- moments ------------------------------------------------------------------------------------------
    def _store_view(self) -> tuple[set[str], set[str]]:
        """(checkpoints with objects, checkpoints with a manifest); nothing while the server is down."""
        try:
            keys = self.store.list_keys(self.prefix)
        except Exception:  # noqa: BLE001 - the store is down (an outage we caused): no moment seen
            return set(), set()
        names = {k[len(self.prefix) + 1:].partition("/")[0] for k in keys}
        done = {k[len(self.prefix) + 1:].partition("/")[0] for k in keys if k.endswith("/manifest.json")}
        return names, done

    def _moment(self, fault: Fault, attempt: Attempt) -> Callable[[], bool]:
        out0 = self.run.spec.output_dir(0)
        ckpts = [self.run.spec.output_dir(n) / "checkpoints" for n in range(self.run.spec.nodes)]
        metrics = out0 / "metrics.jsonl"
        start_rows = len(train_losses(metrics))
        before = self._store_view()[1]
        if fault.moment == "time":
            return lambda: attempt.elapsed >= fault.value
        if fault.moment == "step":
            return lambda: any(s >= fault.value for s, _ in train_losses(metrics)[start_rows:])
        if fault.moment == "saving":
            return lambda: any(d.is_dir() and not (d / "COMPLETE").exists()
                               for c in ckpts if c.is_dir() for d in c.glob("step_*"))
        if fault.moment == "uploading":
            return lambda: bool((lambda v: v[0] - v[1])(self._store_view()))
        if fault.moment == "published":
            return lambda: bool(self._store_view()[1] - before)
        return lambda: any(True for c in ckpts if c.is_dir() for _ in c.glob("step_*/**/.*.part"))

    def wait_for(self, fault: Fault, attempt: Attempt) -> bool:
        """Whether the moment came while the attempt still ran."""
        ready = self._moment(fault, attempt)
        deadline = time.monotonic() + ATTEMPT_TIMEOUT_S
        while attempt.running() and time.monotonic() < deadline:
            try:
                if ready():
                    return True
            except OSError:  # a directory removed while we read it (rotation, a partial save): not yet
                pass
            time.sleep(0.02)  # polling disks and the store for a moment: nothing can notify us of it
        return False

    # -- faults ---------------------------------------------------------------------------------------------
    def inject(self, fault: Fault, attempt: Attempt) -> bool:
        """Inject ``fault``; returns whether the attempt is expected to end because of it."""
        node = fault.node % self.run.spec.nodes
        if fault.kind == "kill_worker":
            workers = attempt.workers()
            victim = workers.get(fault.node) or next(iter(workers.values()), None)
            if victim is not None:
                victim.kill()
            return True
        if fault.kind == "kill_launcher":
            os.kill(attempt.procs[node].pid, signal.SIGKILL)
            return True
        if fault.kind == "sigterm":  # Kubernetes and SLURM: SIGTERM to the pod's main process, the launcher
            os.kill(attempt.procs[node].pid, signal.SIGTERM)
            return True
        if fault.kind == "sigint":  # Ctrl-C in the terminal: the whole foreground process group
            os.killpg(attempt.procs[node].pid, signal.SIGINT)
            return True
        if fault.kind == "s3_outage":
            self.server.stop(kill=True)
            self._hold(fault.hold_s, attempt)
            self.server.start()
            return False
        if fault.kind == "full_disk":
            if not self.disks.fill(node):
                return False
            self._hold(fault.hold_s, attempt)
            self.disks.free(node)
            return True  # a save that hit the full disk ends the run (to be resumed); else it simply goes on
        if fault.kind == "corrupt_object":
            self._corrupt_newest()
            # The node is replaced: its disk (every node's, for a single-node job) is gone, so the resume reads
            # the store, where the corrupt object must be noticed.
            attempt.kill_all()
            for n in range(self.run.spec.nodes):
                self._wipe(n, attempt)
            return True
        attempt.kill_node(node)  # wipe_disk: the node's machine is lost, and its local disk with it
        attempt.wait(60)
        self._wipe(node, attempt)
        return True

    def _hold(self, seconds: float, attempt: Attempt) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and attempt.running():
            time.sleep(0.1)  # the fault lasts this long: a duration, not synchronisation

    def _wipe(self, node: int, attempt: Attempt) -> None:
        out = self.run.spec.output_dir(node)
        if node == 0:
            _note_progress(self.run, attempt)
        if out.is_dir():
            for child in out.iterdir():  # the mount point (a full-disk tmpfs) stays; what it held is gone
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        if node == 0:
            self.run.wiped_rank0_at.append(attempt.index)

    def _corrupt_newest(self) -> None:
        names = sorted(self._store_view()[1])
        if not names:
            return
        prefix = f"{self.prefix}/{names[-1]}"
        try:
            files = sorted(self.store.read_manifest(prefix)["files"])
            rel = random.Random(self.run.plan.seed).choice(files)
            key = f"{prefix}/{rel}"
            self.store.client.put_object(Bucket=self.store.bucket, Key=f"{self.store.prefix}/{key}",
                                         Body=CORRUPTED)
            self.run.corrupted.append(key)
        except Exception:  # noqa: BLE001 - rotated away meanwhile (or the store is down): nothing corrupted
            return


def run_trial(plan: Plan, spec: JobSpec, store: Any, server: Any, disks: Any) -> TrialRun:
    """Launch, inject the plan's faults one after the other, resume until the job ends."""
    run = TrialRun(plan, spec)
    injector = Injector(run, store, server, disks)
    faults = list(plan.faults)
    for index in range(len(plan.faults) + 3):
        attempt = Attempt(spec, index).start()
        run.attempts.append(attempt)
        ended_by_fault = False
        while faults and not ended_by_fault:
            fault = faults.pop(0)
            if not injector.wait_for(fault, attempt):
                run.missed.append(fault.kind)
                continue
            ended_by_fault = injector.inject(fault, attempt)
            run.injected.append(fault.kind)
        if not attempt.wait(SURVIVORS_S if ended_by_fault else ATTEMPT_TIMEOUT_S):
            attempt.kill_all()
            if not ended_by_fault:
                run.errors.append(f"attempt {index} hung ({ATTEMPT_TIMEOUT_S:.0f}s); killed")
                return run
            run.restarted_by_scheduler += 1
        _note_progress(run, attempt)
        codes = attempt.exit_codes()
        if all(c == 0 for c in codes):
            return run
        if 2 in codes:
            run.errors.append(f"attempt {index}: user error (exit 2): {_tail(attempt)}")
            return run
        if not ended_by_fault:
            run.errors.append(f"attempt {index} failed (exit {codes}) with no fault to explain it: {_tail(attempt)}")
            return run
    run.errors.append(f"the job did not end within {len(run.attempts)} attempts")
    return run


def _note_progress(run: TrialRun, attempt: Attempt) -> None:
    steps = [s for s, _ in train_losses(run.spec.output_dir(0) / "metrics.jsonl")]
    run.max_step[attempt.index] = max([run.max_step.get(attempt.index, 0), *steps[-1:]])


def _tail(attempt: Attempt) -> str:
    lines = [line for line in attempt.log_text().splitlines() if line.strip()]
    return " | ".join(lines[-6:])[-1500:]


def run_reference(spec: JobSpec) -> list[str]:
    """The uninterrupted job of the same config (errors, if it did not end with exit 0)."""
    attempt = Attempt(spec, 0).start()
    if not attempt.wait(ATTEMPT_TIMEOUT_S):
        attempt.kill_all()
        return ["reference run hung"]
    if any(c != 0 for c in attempt.exit_codes()):
        return [f"reference run failed {attempt.exit_codes()}: {_tail(attempt)}"]
    return []
