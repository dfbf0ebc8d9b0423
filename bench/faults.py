"""A seeded fault campaign: random faults at random moments against a small 2-rank job with checkpoints in a real
local S3 server (SeaweedFS), then the invariants checked after every trial.

    python bench/faults.py --trials 50 --seed 1          # the full campaign (exit 0 only if every trial passed)
    python bench/faults.py --replay 1234567              # one failing trial again, by the seed the table printed

Each trial draws, from its own seed alone: one node or two (separate output_dirs, nothing shared), and 1-3 faults
(SIGKILL of a worker or of a launcher, SIGTERM, SIGINT, the S3 server killed for a while, a node's disk wiped, a
full disk, a stored object corrupted), each at a moment: a time after the launch, a step, mid-save, mid-upload,
right after a manifest (the store's rotation), mid-download of a resume. The job is resumed with
``--resume_from_checkpoint auto`` until it ends; then fault_checks.py checks the invariants. The uninterrupted
reference (per mode) is computed once per work directory and reused.

A full disk is a size-limited tmpfs mounted on each node's output_dir and filled up: that needs root; without it
that fault is drawn but never injected ("missed"). Set ``--work`` to keep references between campaigns."""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent), str(_HERE.parent / "tests" / "support"), str(_HERE.parent / "tools")]

from fault_checks import Reference, Verdict, check_trial, load_weights  # noqa: E402
from fault_cluster import JobSpec, tagged_processes, train_losses  # noqa: E402
from fault_trial import KINDS, draw_plan, run_reference, run_trial  # noqa: E402

DISK_MIB = 384


class Disks:
    """Each node's output_dir on a tmpfs of DISK_MIB (when we may mount), to fill up on demand."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.mounted: dict[int, Path] = {}

    @staticmethod
    def can_mount(scratch: Path) -> bool:
        probe = scratch / "mount-probe"
        probe.mkdir(parents=True, exist_ok=True)
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", str(probe)], check=True)
        return ok

    def mount(self, spec: JobSpec) -> None:
        if not self.enabled:
            return
        for node in range(spec.nodes):
            out = spec.output_dir(node)
            out.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m", "tmpfs", str(out)], check=True)
            self.mounted[node] = out

    def fill(self, node: int) -> bool:
        out = self.mounted.get(node)
        if out is None:
            return False
        st = os.statvfs(out)
        with open(out / ".ballast", "wb") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, st.f_bavail * st.f_frsize)
            except OSError:
                pass  # what fitted is enough: the disk is full
        return True

    def free(self, node: int) -> None:
        out = self.mounted.get(node)
        if out is not None:
            (out / ".ballast").unlink(missing_ok=True)

    def keep(self) -> None:
        """Copy what each tmpfs holds beside it (``out.kept``): unmounting loses it."""
        for out in self.mounted.values():
            shutil.copytree(out, out.parent / "out.kept", dirs_exist_ok=True)

    def unmount(self) -> None:
        for out in self.mounted.values():
            subprocess.run(["umount", "-l", str(out)], capture_output=True)
        self.mounted.clear()


def _fixtures(work: Path) -> tuple[Path, Path]:
    from fixtures import DEMO_DATA, make_tiny_model, subset_squad

    model, train = work / "tiny", work / "train.json"
    if not (model / "config.json").is_file():
        make_tiny_model(model, dropout=0.1)  # dropout on: exact resume must restore the RNG states too
    if not train.is_file():
        subset_squad(DEMO_DATA / "train.json", train, 6)
    return model, train


def _env(server, work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "WANDB_"))}
    # A DeepSpeed op cache of the campaign's own: every load of a JIT op holds <dir>/<op>/lock for a moment, and
    # a worker killed then leaves it for good (torch's FileBaton has no owner and no timeout), hanging every later
    # launch that uses that cache. Here that can only stop this campaign, never another checkout's runs.
    env["TORCH_EXTENSIONS_DIR"] = str(work / "torch_extensions")
    env.update(server.env())
    env.update({"AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "AWS_EC2_METADATA_DISABLED": "true", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
                "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "QA_S3_MULTIPART_THRESHOLD_MIB": "1",
                "PYTHONPATH": str(_HERE.parent),
                # As the project's launchers (launch/lib.bash) run the job: the agent forwards these signals to
                # the workers and gives them this long to checkpoint before it kills them.
                "PET_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
                "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "300"})
    return env


def _reference(mode: str, work: Path, model: Path, train: Path, server, store_for) -> Reference:
    """The uninterrupted job (per mode), computed once per work directory."""
    root = work / f"reference-{mode}"
    final = root / "node0" / "out" / "final"
    if not (final / "model.safetensors").is_file():
        shutil.rmtree(root, ignore_errors=True)
        bucket = f"ref-{secrets.token_hex(4)}"
        store_for(f"s3://{bucket}", create_bucket=True).check()
        spec = JobSpec(mode, model, train, f"s3://{bucket}/runs", "ref", root, _env(server, work),
                       tag=f"ref-{mode}")
        errors = run_reference(spec)
        if errors:
            raise SystemExit(f"the reference run ({mode}) failed: {errors}")
    losses = dict(train_losses(root / "node0" / "out" / "metrics.jsonl"))
    return Reference(load_weights(final), losses)


def _build_ops(env: dict[str, str]) -> None:
    """Build DeepSpeed's CPU collectives op into the campaign's cache before any fault can interrupt it."""
    if env.get("DS_ACCELERATOR") == "cpu":
        ours, theirs = Path(env["TORCH_EXTENSIONS_DIR"]), Path(sys.prefix) / "torch_extensions"
        if not ours.exists() and (theirs / "deepspeed_shm_comm").is_dir():
            # The environment's build: ninja finds it up to date when built by this same Python (as in CI).
            shutil.copytree(theirs / "deepspeed_shm_comm", ours / "deepspeed_shm_comm",
                            ignore=shutil.ignore_patterns("lock"))
        subprocess.run([sys.executable, "-c", "from deepspeed.accelerator import get_accelerator; "
                        "get_accelerator().create_op_builder('ShareMemCommBuilder').load()"],
                       env=env, check=True, capture_output=True)


def run_campaign(seeds: list[int], work: Path, out=sys.stdout) -> list[tuple[int, str, Verdict, list[str]]]:
    from local_s3 import LocalS3Server
    from qa.checkpoint.s3 import S3Store

    work.mkdir(parents=True, exist_ok=True)
    model, train = _fixtures(work)
    server = LocalS3Server(Path(tempfile.mkdtemp(prefix="faults-s3-", dir=work)))
    server.start()

    def store_for(uri: str, **kw) -> S3Store:
        return S3Store(uri, endpoint_url=server.endpoint_url, region=server.region,
                       aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key,
                       retry_attempts=1, connect_timeout_s=2, read_timeout_s=10, **kw)

    disks_ok = Disks.can_mount(work)
    _build_ops(_env(server, work))
    refs: dict[str, Reference] = {}
    results = []
    spec: JobSpec | None = None
    try:
        for seed in seeds:
            plan = draw_plan(seed)
            if plan.mode not in refs:
                refs[plan.mode] = _reference(plan.mode, work, model, train, server, store_for)
            server.start()  # a trial may end with it down (an outage at the very end): bring it back
            bucket = f"trial-{seed % 10**8}-{secrets.token_hex(3)}"
            store = store_for(f"s3://{bucket}/runs", create_bucket=True)
            store.check()
            root = work / f"trial-{seed}"
            shutil.rmtree(root, ignore_errors=True)
            spec = JobSpec(plan.mode, model, train, f"s3://{bucket}/runs", f"t{seed}", root, _env(server, work),
                           tag=f"faults-{seed}-{secrets.token_hex(3)}")
            disks = Disks(disks_ok)
            t0 = time.monotonic()
            try:
                disks.mount(spec)
                run = run_trial(plan, spec, store, server, disks)
                server.start()
                verdict = check_trial(run, refs[plan.mode], store)
                if verdict.violations:
                    disks.keep()  # a failing trial's disks are looked at afterwards
            finally:
                disks.unmount()
            status = "ok" if not verdict.violations else "FAIL"
            print(f"trial seed={seed} {plan.describe()} -> {status} in {time.monotonic() - t0:.0f}s "
                  f"(injected {run.injected}, missed {run.missed}, resumes {verdict.resumes}, "
                  f"redone {verdict.redone}, survivors killed {run.restarted_by_scheduler})", file=out, flush=True)
            for v in verdict.violations:
                print(f"    {v}", file=out, flush=True)
            results.append((seed, plan.describe(), verdict, run.injected + [f"missed:{k}" for k in run.missed]))
            if not verdict.violations:
                shutil.rmtree(root, ignore_errors=True)  # keep only failing trials' logs and outputs
    except KeyboardInterrupt:  # Ctrl-C: stop after the trials done so far, and print their table
        print(f"interrupted: {len(results)} trial(s) done", file=out, flush=True)
        if spec is not None:
            for proc in tagged_processes(spec.tag):  # the trial in progress runs in sessions of its own
                proc.kill()
    finally:
        server.stop(kill=True)
    return results


def table(results: list[tuple[int, str, Verdict, list[str]]]) -> str:
    injected = collections.Counter(k for *_, kinds in results for k in kinds if not k.startswith("missed:"))
    missed = collections.Counter(k[7:] for *_, kinds in results for k in kinds if k.startswith("missed:"))
    verdicts = [v for _, _, v, _ in results]
    failed = [(seed, plan, v) for seed, plan, v, _ in results if v.violations]
    lines = ["| metric | value |", "|---|---|",
             f"| trials | {len(results)} |",
             *[f"| faults: {k} (injected / drawn but the run ended first) | {injected[k]} / {missed[k]} |"
               for k in KINDS],
             f"| resumes | {sum(v.resumes for v in verdicts)} |",
             f"| bit-exact endings | {sum(v.bit_exact for v in verdicts)} / {len(results)} |",
             f"| work redone (steps trained twice) | {sum(v.redone for v in verdicts)} |",
             f"| leaked processes | {sum(v.leaked for v in verdicts)} |",
             f"| orphan objects | {sum(v.orphans for v in verdicts)} |",
             f"| failed trials | {len(failed)} |"]
    for seed, plan, v in failed:
        lines.append(f"| failed: seed {seed} ({plan}) | {'; '.join(v.violations)[:300]} |")
    return "\n".join(lines)


def trial_seeds(seed: int, trials: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10**9) for _ in range(trials)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replay", type=int, action="append", help="run the trial of this seed (repeatable)")
    parser.add_argument("--skip", type=int, default=0, help="start after this many trials of the campaign")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "qa-faults")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    seeds = args.replay or trial_seeds(args.seed, args.trials)[args.skip:]
    results = run_campaign(seeds, args.work)
    print(table(results), flush=True)
    if args.json:
        args.json.write_text(json.dumps([{"seed": s, "plan": p, "faults": k, "violations": v.violations,
                                          "bit_exact": v.bit_exact, "redone": v.redone, "leaked": v.leaked,
                                          "orphans": v.orphans, "resumes": v.resumes}
                                         for s, p, v, k in results], indent=1))
    return 0 if all(not v.violations for _, _, v, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
