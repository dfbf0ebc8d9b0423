"""One training job of the fault campaign (bench/faults.py): 2 ranks, as one node (``single``: one launcher, one
output_dir) or as two nodes (``nodes``: two launchers of one process each, each with its own output_dir, no
filesystem shared), checkpoints to a real local S3 server. Every process started here carries
``QA_FAULT_TRIAL=<id>`` in its environment, so whatever outlives the trial can be found by that tag alone."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
TRIAL_TAG = "QA_FAULT_TRIAL"
STEPS, EVERY, KEEP = 12, 3, 2


@dataclass
class JobSpec:
    """What the trial trains: the same for a trial and its reference, apart from where things go."""

    mode: str  # "single" or "nodes"
    model: Path
    train: Path
    s3_uri: str
    run_name: str
    root: Path  # the trial's scratch directory: output dirs, logs, W&B, dataset caches
    env: dict[str, str]  # base environment (S3 endpoint and credentials, offline switches)
    tag: str = ""

    @property
    def nodes(self) -> int:
        return 2 if self.mode == "nodes" else 1

    def output_dir(self, node: int) -> Path:
        return self.root / f"node{node}" / "out"

    def args(self, node: int, resume: bool) -> list[str]:
        args = ["--model_name_or_path", str(self.model), "--train_file", str(self.train),
                "--output_dir", str(self.output_dir(node)), "--max_seq_length", "128", "--doc_stride", "32",
                "--report_to", "wandb", "--wandb_project", "qa-faults", "--mixed_precision", "no",
                "--dataloader_num_workers", "0", "--per_device_train_batch_size", "4", "--logging_steps", "1",
                "--learning_rate", "2e-3", "--do_eval", "false", "--deepspeed", "configs/deepspeed/zero2.json",
                "--max_train_steps", str(STEPS), "--checkpointing_steps", str(EVERY),
                "--save_total_limit", str(KEEP), "--s3_uri", self.s3_uri, "--run_name", self.run_name,
                "--s3_upload_timeout", "120"]
        return [*args, "--resume_from_checkpoint", "auto"] if resume else args

    def node_env(self, node: int) -> dict[str, str]:
        env = {**self.env, TRIAL_TAG: self.tag, "WANDB_DIR": str(self.root / f"wandb{node}"),
               # Outside output_dir (a wiped disk keeps it), one per node, shared by the trials of a campaign.
               "HF_DATASETS_CACHE": str(self.root.parent / f"hf_cache_node{node}")}
        return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Attempt:
    """One launch of the job (every node), until each launcher exited."""

    spec: JobSpec
    index: int
    procs: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    started: float = 0.0

    def start(self) -> Attempt:
        port = free_port()
        self.started = time.monotonic()
        for node in range(self.spec.nodes):
            self.spec.output_dir(node).parent.mkdir(parents=True, exist_ok=True)
            log = self.spec.root / f"attempt{self.index}_node{node}.log"
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--mixed_precision", "no",
                   "--dynamo_backend", "no", "--use_deepspeed", "--main_process_port", str(port)]
            if self.spec.mode == "nodes":
                cmd += ["--num_machines", "2", "--machine_rank", str(node), "--main_process_ip", "127.0.0.1",
                        "--num_processes", "2", "--deepspeed_multinode_launcher", "standard",
                        "--rdzv_backend", "c10d"]
            else:
                cmd += ["--num_machines", "1", "--num_processes", "2"]
            cmd += [str(REPO / "train.py"), *self.spec.args(node, resume=self.index > 0)]
            with log.open("w") as out:
                # A session of its own per node, as a pod or a shell job: a signal to its group reaches it alone.
                self.procs.append(subprocess.Popen(cmd, cwd=REPO, env=self.spec.node_env(node), stdout=out,
                                                   stderr=subprocess.STDOUT, start_new_session=True))
            self.logs.append(log)
            if node == 0 and self.spec.nodes > 1:
                self._wait_rendezvous(port)
        return self

    def _wait_rendezvous(self, port: int) -> None:
        # Both "nodes" are 127.0.0.1: node 1's agent would host the rendezvous too if it came first.
        deadline = time.monotonic() + 180
        while not _listening(port) and self.procs[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # polling a port with a deadline

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def wait(self, timeout: float) -> bool:
        """Whether every launcher exited within ``timeout``."""
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return False
        return True

    def exit_codes(self) -> list[int | None]:
        return [p.poll() for p in self.procs]

    def workers(self, node: int | None = None) -> dict[int, psutil.Process]:
        """rank -> train.py worker process (of one node, or of every node)."""
        found: dict[int, psutil.Process] = {}
        for k, p in enumerate(self.procs):
            if node is not None and k != node:
                continue
            try:
                children = psutil.Process(p.pid).children(recursive=True)
            except psutil.Error:
                continue
            for child in children:
                try:
                    env = child.environ()
                    if "RANK" in env and any(a.endswith("train.py") for a in child.cmdline()):
                        found[int(env["RANK"])] = child
                except psutil.Error:
                    continue
        return found

    def kill_node(self, node: int) -> None:
        """The node's machine is gone: every process of it dies at once."""
        procs = [*self.workers(node).values()]
        for w in procs:
            _signal(w, signal.SIGSTOP)  # none of them runs on while the others are being killed
        try:
            os.killpg(self.procs[node].pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for w in procs:
            _signal(w, signal.SIGKILL)

    def kill_all(self) -> None:
        for node in range(len(self.procs)):
            self.kill_node(node)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass

    def log_text(self) -> str:
        return "\n".join(log.read_text(errors="replace") for log in self.logs if log.exists())


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except psutil.Error:
        pass


def tagged_processes(tag: str) -> list[psutil.Process]:
    """Every live process whose environment carries this trial's tag."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(TRIAL_TAG) == tag and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def train_losses(metrics: Path) -> list[tuple[int, float]]:
    """(step, train/loss) rows of a metrics.jsonl, in file order (a resumed run appends the redone steps)."""
    if not metrics.is_file():
        return []
    rows = []
    for line in metrics.read_text().splitlines():
        try:
            row: dict[str, Any] = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill: the tracker writes whole lines, the disk may not keep them
        if "train/loss" in row:
            rows.append((int(row["step"]), float(row["train/loss"])))
    return rows
