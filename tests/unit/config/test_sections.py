"""The config split into sections: every key lands somewhere, components see only their section, and the
package's imports stay acyclic (checked statically, so the test costs no interpreter start-ups)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from qa.config import TrainConfig, split_config
from qa.config.schema import TrainConfig as SchemaConfig

QA = Path(__file__).resolve().parents[3] / "qa"
# Rooms below the composition root (train.py, qa/trainer/setup.py, qa/preflight): they take a section.
COMPONENT_ROOMS = ("checkpoint", "data", "distributed", "eval", "model", "predict", "tracking")
# Keys read by train.py / qa.trainer itself, deliberately in no component's section.
RUN_SWITCHES = {
    "dry_run": "train.py prints the plan instead of running",
    "eval_before_training": "train.py's extra evaluation",
    "overwrite_output_dir": "who owns output_dir (qa.trainer.output_dir)",
    "resume_from_checkpoint": "which checkpoint (setup.start hands it to the Checkpointer)",
    "run_name": "read through resolved_run_name",
    "total_train_batch_size": "a check on the batch geometry (qa.config.checks, qa.preflight)",
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(QA.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imported(tree: ast.AST, module: str, *, top_level_only: bool) -> set[str]:
    """Modules named by the imports in ``tree`` (``from pkg import name`` counts pkg.name when that is a module)."""
    nodes: list[ast.AST] = []
    if top_level_only:
        for node in getattr(tree, "body", []):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue  # only for type checkers: never executed
            nodes.extend(ast.walk(node) if not isinstance(node, ast.FunctionDef | ast.ClassDef) else [])
    else:
        nodes = list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else ".".join(module.split(".")[: -node.level] + [node.module])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] == "qa"}


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in QA.rglob("*.py")}


def test_every_key_reaches_a_section_or_is_a_run_switch() -> None:
    source = (QA / "config" / "sections.py").read_text()
    read = {node.attr for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "cfg"}
    keys = {f.name for f in dataclasses.fields(SchemaConfig)}
    assert keys - read - set(RUN_SWITCHES) == set(), "a new key must go into a section (qa/config/sections.py)"
    assert set(RUN_SWITCHES) <= keys


def test_components_never_see_the_whole_config() -> None:
    offenders = []
    for name, path in _modules().items():
        if name.split(".")[1:2] and name.split(".")[1] in COMPONENT_ROOMS:
            text = path.read_text()
            imports = _imported(ast.parse(text), name, top_level_only=False)
            if any(i == "qa.config" or i.startswith("qa.config.") for i in imports) or "TrainConfig" in text:
                offenders.append(name)
    assert offenders == []


def test_settings_modules_import_only_other_settings() -> None:
    """Sections are plain data: the config imports them without pulling in (or cycling through) any component."""
    for name, path in _modules().items():
        if name.endswith(".settings"):
            imports = _imported(ast.parse(path.read_text()), name, top_level_only=False)
            assert {i for i in imports if not i.endswith("settings") and not i.endswith(".settings.DataOrder")} \
                == set(), name


def test_no_import_cycles_at_import_time() -> None:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = {d for d in _imported(ast.parse(path.read_text()), name, top_level_only=True) if d in modules}
        # A submodule importing its own package is the package's import in progress, not a cycle.
        graph[name] = {d for d in deps if not name.startswith(f"{d}.")} - {name}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(dep):] + [dep])}")
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_sections_carry_the_values_of_their_keys(tmp_path: Path) -> None:
    cfg = TrainConfig(output_dir=str(tmp_path / "runs" / "r1"), per_device_train_batch_size=3,
                      gradient_accumulation_steps=2, seed=7, learning_rate=1e-4, s3_uri="s3://b/p",
                      wandb_group=None, n_best_size=5, max_train_steps=9)
    s = split_config(cfg)
    assert (s.optimizer.learning_rate, s.storage.uri, s.eval.decode.n_best_size, s.loop.max_train_steps) == \
        (1e-4, "s3://b/p", 5, 9)
    assert s.checkpoint.run_name == s.tracking.run_name == s.tracking.group == "r1"
    assert "learning_rate: 0.0001" in s.checkpoint.config_yaml
    # Earlier checkpoints recorded exactly these keys; another set would refuse every one of them on resume.
    assert s.data.order.key(4) == {
        "seed": 7, "per_device_train_batch_size": 3, "gradient_accumulation_steps": 2, "global_batch_size": 24,
        "group_by_length": True, "max_seq_length": 384, "doc_stride": 128, "max_train_samples": None,
        "train_file": None, "dataset_name": None}


def test_the_saved_config_hides_secrets(tmp_path: Path) -> None:
    cfg = TrainConfig(output_dir=str(tmp_path), s3_sse="aws:kms", s3_sse_kms_key_id="key-id-that-is-secret")
    assert "key-id-that-is-secret" not in split_config(cfg).checkpoint.config_yaml
