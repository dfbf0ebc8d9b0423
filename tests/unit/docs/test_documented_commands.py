"""Every command in the README, in docs/*.md and in the config headers runs.

Commands are the lines of the ```bash blocks of README.md and docs/*.md and the ``#   command`` lines at the top
of configs/*.yaml and configs/accelerate/*.yaml (a trailing backslash continues a line). A command written in
several places is one test case, named after the first place (README, then docs, then configs); the rest of
what the documents say is checked in test_documents.py. What it takes to run them on a 2-core machine without
GPUs or internet:

* GPU and cluster launches run as dry runs (``--dry_run`` appended) of train.py, in this process, with the
  environment that launcher gives its workers and the world size it plans for. For ``accelerate launch`` that
  environment comes from accelerate's own ``launch_command``, with only its final process spawning replaced by
  capturing the environment (8 or 16 real workers would cost minutes here; tests/e2e launch real ones, 2 at a
  time), plus what torchrun adds (WORLD_SIZE, RANK). A bare ``accelerate launch train.py`` is planned as on the
  8-GPU machine the recipe is written for, where accelerate counts the GPUs and turns on --multi_gpu.
  launch/local.sh (LAUNCH_DEVICE=gpu) and launch/torchrun.sh print their launcher command (QA_LAUNCH_ECHO=1);
  launch/slurm.sbatch runs with a fake srun/scontrol that record what it would start on each node.
* Hub names cannot load offline: model_name_or_path is replaced by a local tiny model, dataset_name by the
  data/demo files, and preprocessing_num_workers by 1 (8 tokenizer processes on 2 cores for 300 examples).
* make targets run as ``make -n`` (``make test`` would run this test, ``make demo`` takes minutes);
  ``export`` lines are environment settings, applied to the command that follows them.
* The install steps written without make (venv, ``pip install``) must be steps of ``make venv``: they are
  compared with ``make -n -B .venv/.installed``, not run (an install takes minutes and the network).
* ``python train.py --help`` runs in this process.
* ``python -m qa.eval`` runs on a saved v2 evaluation built here, its output_dir replaced; ``python -m
  qa.predict`` on the tiny model, with a question file written here.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from documents import DOCUMENTS, blocks
from fixtures import DEMO_DATA, REPO, make_tiny_model

LAUNCHER_ENV = ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_CONFIG_FILE", "ACCELERATE_CONFIG_DS_FIELDS",
                "ACCELERATE_DEEPSPEED_ZERO3_INIT", "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL",
                "ACCELERATE_USE_CPU", "ACCELERATE_MIXED_PRECISION", "WORLD_SIZE", "RANK", "LOCAL_RANK",
                "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")
COMMAND_START = re.compile(r"^(?:[A-Z_]+=\S+ )*(?:launch/|accelerate |python3? |sbatch |make |export |torchrun |source )")


def _joined(lines: list[str]) -> Iterator[str]:
    buf = ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1].strip() + " "
            continue
        yield (buf + line.strip()).strip()
        buf = ""


def _strip_comment(line: str) -> str:
    return re.sub(r"\s+#\s.*$", "", line).strip()


def document_commands() -> list[tuple[str, str]]:
    out = []
    for document in DOCUMENTS:
        for block in blocks(document, "bash"):
            lines = [line for line in block.splitlines() if not line.lstrip().startswith("#")]
            out += [(document, _strip_comment(c)) for c in _joined(lines) if _strip_comment(c)]
    return out


def config_commands() -> list[tuple[str, str]]:
    out = []
    for path in sorted([*(REPO / "configs").glob("*.yaml"), *(REPO / "configs" / "accelerate").glob("*.yaml")]):
        header = []
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            if line.startswith("#   "):  # commands are indented; prose is not
                header.append(line[1:])
        commands = [_strip_comment(c) for c in _joined(header)]
        out += [(str(path.relative_to(REPO)), c) for c in commands if COMMAND_START.match(c)]
    return out


def _first_places(found: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Each command once, with the first place that writes it: the same command runs the same way anywhere."""
    seen: dict[str, str] = {}
    for source, command in found:
        seen.setdefault(command, source)
    return [(source, command) for command, source in seen.items()]


FOUND = document_commands() + config_commands()
DOCUMENTED = _first_places(FOUND)


def test_the_documents_hold_commands() -> None:
    sources = {src for src, _ in FOUND}
    assert {"README.md", "docs/clusters.md", "docs/checkpoints.md", "docs/evaluation.md",
            "configs/squad_v1_distilbert.yaml", "configs/accelerate/8gpu_zero3_fp16.yaml"} <= sources
    assert len(DOCUMENTED) >= 25
    for _, command in FOUND:
        assert COMMAND_START.match(command), f"not a command we know how to run: {command}"
        assert "CONFIG.yaml" not in command and "NPROC" not in command, f"a placeholder, not a command: {command}"


# ----------------------------------------------------------------------------------------------------------
# Running them
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _offline(args: list[str], tiny: Path) -> list[str]:
    """Hub names -> local tiny model and demo data (v2 files for a v2 config or flag)."""
    config = args[args.index("--config") + 1] if "--config" in args else ""
    v2 = "v2" in Path(config).name or "--version_2_with_negative" in args
    train, dev = ("train_v2.json", "dev_v2.json") if v2 else ("train.json", "dev.json")
    return [*args, "--model_name_or_path", str(tiny), "--dataset_name", "null", "--train_file",
            str(DEMO_DATA / train), "--validation_file", str(DEMO_DATA / dev), "--preprocessing_num_workers",
            "null", "--dry_run"]


def _accelerate_env(launch_args: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, str], int]:
    """The environment `accelerate launch LAUNCH_ARGS train.py` gives its workers, and how many it starts."""
    import accelerate.commands.launch as acc

    seen: dict = {}

    def deepspeed(args) -> None:
        seen.update(env=acc.prepare_deepspeed_cmd_env(args)[1], n=args.num_processes)

    def multi_gpu(args) -> None:
        seen.update(env=acc.prepare_multi_gpu_env(args), n=args.num_processes)

    def simple(args) -> None:
        seen.update(env=acc.prepare_simple_launcher_cmd_env(args)[1], n=1)

    monkeypatch.setattr(acc, "deepspeed_launcher", deepspeed)
    monkeypatch.setattr(acc, "multi_gpu_launcher", multi_gpu)
    monkeypatch.setattr(acc, "simple_launcher", simple)
    with monkeypatch.context() as m:
        m.chdir(REPO)
        acc.launch_command(acc.launch_command_parser().parse_args([*launch_args, "train.py"]))
    env = {k: v for k, v in seen["env"].items() if os.environ.get(k) != v}
    # What torchrun adds for each worker; rank 0 is the one that prints the plan.
    env.update(WORLD_SIZE=str(seen["n"]), RANK="0", LOCAL_RANK="0", TORCHELASTIC_RUN_ID="docs")
    return env, seen["n"]


def _split_launch(tokens: list[str]) -> tuple[list[str], list[str]]:
    i = next(i for i, t in enumerate(tokens) if t.endswith("train.py"))
    return tokens[:i], tokens[i + 1:]


def _echoed(script: str, argv: list[str], tmp_path: Path) -> list[str]:
    """The launcher command launch/local.sh or launch/torchrun.sh would run (on GPUs)."""
    env = {**os.environ, "QA_LAUNCH_ECHO": "1", "LAUNCH_DEVICE": "gpu", "PYTHON": sys.executable,
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run([str(REPO / script), *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return shlex.split(proc.stdout)


def _sbatched(argv: list[str], nodes: int, tmp_path: Path) -> list[str]:
    """What launch/slurm.sbatch starts with srun on each node (a fake srun records it, SLURM_NODEID=0)."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "srun.args"
    (bin_dir / "srun").write_text(f'#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\nprintf "%q " "$@" > {record}\n')
    (bin_dir / "scontrol").write_text('#!/bin/bash\n[[ "$1 $2" == "show hostnames" ]] && echo node0\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(REPO),
           "SLURM_NNODES": str(nodes), "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "node[0-1]",
           "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["bash", str(REPO / "launch" / "slurm.sbatch"), *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    tokens = shlex.split(record.read_text())
    # bash -c SCRIPT launch PYTHON ACCELERATE_ARGS...: the script runs accelerate with --machine_rank 0 first.
    return ["--machine_rank", "0", *tokens[tokens.index("launch") + 2:]]


def _saved_v2_evaluation(run_dir: Path) -> None:
    from qa.eval.decode import pack_offsets
    from qa.eval.evaluator import EvalExamples, EvalFeatures, decode_and_score
    from qa.eval.outputs import save_eval_arrays, write_eval_outputs

    ctx = "The old mill stands beside the river in Alder"
    words, cursor, spans = ctx.split(" "), 0, []
    for w in words:
        spans.append((cursor, cursor + len(w)))
        cursor += len(w) + 1
    offsets = pack_offsets([[None, None] + spans + [None]] * 2)
    rng = np.random.default_rng(0)
    start, end = (rng.normal(size=offsets.shape[:2]).astype(np.float32) for _ in range(2))
    examples = EvalExamples(ids=["q1", "q2"], contexts=[ctx, ctx], answers=[["the river"], []],
                            questions=["Where is the mill?", "Who built it?"])
    feats = EvalFeatures(example_index=np.array([0, 1]), offsets=offsets, cls_index=np.zeros(2, dtype=np.int64))
    outcome = decode_and_score(examples, feats, start, end, version_2_with_negative=True)
    write_eval_outputs(run_dir, outcome, version_2_with_negative=True)
    save_eval_arrays(run_dir, examples, feats, start, end)
    (run_dir / "run_config.yaml").write_text(yaml.safe_dump({"version_2_with_negative": True}))


@functools.cache
def _make_venv_steps() -> tuple[set[str], set[tuple[str, ...]]]:
    """What ``make venv`` runs: its other commands, and the arguments of each of its ``pip install`` calls."""
    proc = subprocess.run(["make", "-n", "-B", ".venv/.installed"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = {line.strip().rstrip("\\").strip().rstrip(";") for line in proc.stdout.splitlines()}
    pip_args = set()
    for line in lines:
        if " -m pip install " in line:
            args = shlex.split(line.split(" -m pip install ", 1)[1].split("||")[0])
            pip_args.add(tuple(a for a in args if a != "-q"))
    return lines, pip_args


def _check_install_step(tokens: list[str]) -> None:
    """An install step written without make is one that ``make venv`` runs (the same pip arguments)."""
    lines, pip_args = _make_venv_steps()
    if tokens[0] == "source":
        venv = next(line.split()[-1] for line in lines if " -m venv " in line)
        assert tokens[1:] == [f"{venv}/bin/activate"], tokens
    elif tokens[1:3] == ["-m", "venv"]:
        assert shlex.join(tokens) in lines, f"make venv does not run {shlex.join(tokens)}: {sorted(lines)}"
    else:
        assert tokens[1:4] == ["-m", "pip", "install"], tokens
        assert tuple(tokens[4:]) in pip_args, f"make venv installs with {sorted(pip_args)}, not {tokens[4:]}"


def _check_help(train_main, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--help"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    for text in ("--learning_rate", "--output_dir", "--s3_uri", "training schedule:"):
        assert text in out, text


def _run_eval(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``python -m qa.eval`` on a saved v2 evaluation built here, in place of the documented output_dir."""
    from qa.eval.cli import main as eval_main

    run_dir = tmp_path / Path(args[args.index("--output_dir") + 1]).name
    _saved_v2_evaluation(run_dir)
    args[args.index("--output_dir") + 1] = str(run_dir)
    assert eval_main(args) == 0, capsys.readouterr().err
    assert "HasAns_exact" in capsys.readouterr().out


def _run_predict(args: list[str], tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``python -m qa.predict`` on the tiny model (the exported model), with a question file written here."""
    from qa.predict.cli import main as predict_main

    args[args.index("--model_name_or_path") + 1] = str(tiny)
    if "--input" in args:
        questions = tmp_path / "questions.jsonl"
        questions.write_text(json.dumps({"id": "q1", "question": "Who built the mill?",
                                         "context": "The miller built the mill by the river."}) + "\n")
        args[args.index("--input") + 1] = str(questions)
        args[args.index("--output") + 1] = str(tmp_path / "preds" / "predictions.json")
        assert predict_main(args) == 0, capsys.readouterr().err
        assert "q1" in json.loads((tmp_path / "preds" / "predictions.json").read_text())
    else:
        assert predict_main(args) == 0, capsys.readouterr().err
        answer = json.loads(capsys.readouterr().out.splitlines()[0])
        assert {"answer", "score", "start", "end"} <= set(answer)


def _checked_without_training(tokens: list[str], tiny: Path, train_main, tmp_path: Path,
                              capsys: pytest.CaptureFixture) -> bool:
    """Checks a command that is not a training launch; False for a training launch."""
    if tokens[0] == "export":
        key, _, value = tokens[1].partition("=")
        if key == "DS_ACCELERATOR":  # the install's setting for CPU machines, as the Makefile sets it
            from deepspeed.accelerator.real_accelerator import SUPPORTED_ACCELERATOR_LIST

            assert value in SUPPORTED_ACCELERATOR_LIST and "DS_ACCELERATOR" in (REPO / "Makefile").read_text()
        else:
            assert key.startswith("AWS_") and value  # settings for the S3 command after it, which runs below
    elif tokens[0] in ("source", "python3") or tokens[:3] == ["python", "-m", "pip"]:
        _check_install_step(tokens)
    elif tokens[:3] == ["python", "train.py", "--help"]:
        _check_help(train_main, capsys)
    elif tokens[0] == "make":
        proc = subprocess.run(["make", "-n", *tokens[1:]], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert {"demo": "tools/demo.py", "test": "pytest"}[tokens[1]] in proc.stdout
    elif tokens[:3] == ["python", "-m", "qa.eval"]:
        _run_eval(tokens[3:], tmp_path, capsys)
    elif tokens[:3] == ["python", "-m", "qa.predict"]:
        _run_predict(tokens[3:], tiny, tmp_path, capsys)
    else:
        return False
    return True


def _ids() -> list[str]:
    return [f"{src}: {cmd}" for src, cmd in DOCUMENTED]


@pytest.mark.parametrize("index", range(len(DOCUMENTED)), ids=_ids())
def test_documented_command_runs(index: int, tiny: Path, train_main, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    source, command = DOCUMENTED[index]
    for key in LAUNCHER_ENV:
        monkeypatch.delenv(key, raising=False)
    tokens = shlex.split(command)
    env: dict[str, str] = {}
    while "=" in tokens[0] and not tokens[0].startswith("-"):  # VAR=value prefixes
        key, _, value = tokens.pop(0).partition("=")
        env[key] = value
    if _checked_without_training(tokens, tiny, train_main, tmp_path, capsys):
        return
    # A training launch: what each worker would get, then train.py's dry run as rank 0 of that launch.
    if tokens[0] in ("launch/local.sh", "launch/torchrun.sh"):
        tokens = _echoed(tokens[0], tokens[1:], tmp_path)[1:]  # without the python executable
    elif tokens[0] == "sbatch":
        nodes = int(next(t.split("=")[1] for t in tokens if t.startswith("--nodes=")))
        script = next(i for i, t in enumerate(tokens) if t.endswith("slurm.sbatch"))
        tokens = ["-m", "accelerate.commands.launch", *_sbatched(tokens[script + 1:], nodes, tmp_path)]
    launch_args, train_args = _split_launch(tokens)
    if launch_args[:1] == ["accelerate"] or launch_args[:2] == ["-m", "accelerate.commands.launch"]:
        launch_args = launch_args[1:] if launch_args[0] == "accelerate" else launch_args[2:]
        launch_args = launch_args[1:] if launch_args[:1] == ["launch"] else launch_args
        if not any(a in launch_args for a in ("--config_file", "--num_processes", "--multi_gpu")):
            launch_args = ["--multi_gpu", "--num_processes", "8", *launch_args]  # an 8-GPU machine's default
        worker_env, world = _accelerate_env(launch_args, monkeypatch)
    elif launch_args[:2] == ["-m", "torch.distributed.run"]:
        world = int(launch_args[launch_args.index("--nproc_per_node") + 1])
        worker_env = {"WORLD_SIZE": str(world), "RANK": "0", "LOCAL_RANK": "0", "TORCHELASTIC_RUN_ID": "docs"}
    else:
        assert launch_args == ["python"], command
        world = int(env.get("WORLD_SIZE", "1"))
        worker_env = {}
    for key, value in {**env, **worker_env}.items():
        monkeypatch.setenv(key, value)
    if "--s3_uri" in train_args:  # the README's `export AWS_...` lines belong to this command
        monkeypatch.setenv("AWS_PROFILE", "training")
    monkeypatch.chdir(REPO)
    capsys.readouterr()
    rc = train_main(_offline(train_args, tiny))
    out, err = capsys.readouterr()
    assert rc == 0, f"{source}: {command}\n{err[-3000:]}"
    assert re.search(rf"world size +{world} process\(es\)", out), out[:2000]


# The throughput benchmark's invocations quoted in prose, each cut to one small step. The other benchmarks quoted
# are run elsewhere or cannot be cut small: bench/faults.py by tests/e2e/test_fault_campaign.py (seeded trials),
# bench/compile_cpu.py compiles for minutes by design.
BENCH = sorted({c for d in DOCUMENTS
                for c in re.findall(r"`(python bench/train_throughput\.py[^`]*)`", (REPO / d).read_text())})


@pytest.mark.slow
@pytest.mark.parametrize("command", BENCH)
def test_readme_bench_commands_run(command: str) -> None:
    """The benchmark invocations quoted in the documents' prose, cut to one small timed step each."""
    assert BENCH, "the documents quote the benchmark commands"
    tokens = shlex.split(command)
    proc = subprocess.run([sys.executable, *tokens[1:], "--steps", "1", "--warmup", "0", "--batch_size", "4"],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "samples/s" in proc.stdout and "mixed_precision auto picks" in proc.stdout  # names the machine
    if "--baseline" in tokens:
        assert "Speed-up grouped/baseline" in proc.stdout
