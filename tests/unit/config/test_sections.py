"""The config as sections: every key declared once in its component's section, components see only their
section, and the package's imports stay acyclic between folders and inside checkpoint/ (checked statically, so
the test costs no interpreter start-ups)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from qa.config import make_config
from qa.config.load import ConfigParser, config_yaml
from qa.config.sections import KEY_SECTION, SECTIONS
from qa.errors import ConfigError

QA = Path(__file__).resolve().parents[3] / "qa"
# Rooms below the composition root (train.py, qa/trainer/setup.py, qa/preflight): they take a section.
COMPONENT_ROOMS = ("checkpoint", "data", "distributed", "eval", "lifecycle", "model", "predict", "schedule", "tracking")


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


def test_every_key_is_declared_once_and_listed_by_help() -> None:
    fields = [f for cls in SECTIONS.values() for f in dataclasses.fields(cls)]
    names = [f.name for f in fields]
    assert len(names) == len(set(names)), "a key name is declared in two sections"
    assert set(KEY_SECTION) == set(names) and all(f.metadata.get("help") for f in fields)
    help_text = ConfigParser().format_help()
    assert all(f"--{name} " in help_text for name in names)
    assert all(f"{cls.TITLE}:" in help_text for cls in SECTIONS.values())  # one --help group per section


def test_components_never_see_the_whole_config() -> None:
    offenders = []
    for name, path in _modules().items():
        if name.split(".")[1:2] and name.split(".")[1] in COMPONENT_ROOMS:
            text = path.read_text()
            imports = _imported(ast.parse(text), name, top_level_only=False)
            if any(i == "qa.config" or i.startswith("qa.config.") for i in imports):
                offenders.append(name)
    assert offenders == []


def test_settings_modules_import_only_other_settings() -> None:
    """Sections are plain data: the config imports them without pulling in (or cycling through) any component.
    A section's own checks may use a pure module of its own folder (the storage section: the location rules)."""
    modules = _modules()
    for name, path in modules.items():
        if name.endswith(".settings"):
            folder = name.rsplit(".", 1)[0]
            imports = {i if i in modules else i.rsplit(".", 1)[0]  # module.Name -> module
                       for i in _imported(ast.parse(path.read_text()), name, top_level_only=False)}
            allowed = {i for i in imports if i.endswith("settings") or i in ("qa.keys", "qa.errors")
                       or i.rsplit(".", 1)[0] == folder}
            assert imports - allowed == set(), name


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


def _folder_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for name, path in _modules().items():
        parts = name.split(".")
        if len(parts) < 3:
            continue
        for dep in _imported(ast.parse(path.read_text()), name, top_level_only=False):
            dep_folder = dep.split(".")[1] if dep.count(".") >= 1 else ""
            if dep_folder != parts[1] and (QA / dep_folder).is_dir():
                edges.setdefault(parts[1], set()).add(dep_folder)
    return edges


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep, [*stack, dep])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [node])):
            return found
    return None


def test_no_loops_between_folders_even_through_function_level_imports() -> None:
    edges = _folder_edges()
    assert _cycle(edges) is None, f"folders import each other: {' -> '.join(_cycle(edges) or [])}"
    # the layering the README's layout describes: the config sits above the components, below the trainer
    assert "trainer" not in set().union(*(edges.get(f, set()) for f in edges if f != "trainer"))
    assert edges.get("config", set()) <= set(COMPONENT_ROOMS) - {"predict"}


def test_no_loops_inside_checkpoint_even_through_function_level_imports() -> None:
    modules = {n: p for n, p in _modules().items() if n.startswith("qa.checkpoint.")}
    graph = {n: {d for d in _imported(ast.parse(p.read_text()), n, top_level_only=False) if d in modules} - {n}
             for n, p in modules.items()}
    assert _cycle(graph) is None, f"import cycle in qa/checkpoint: {_cycle(graph)}"


def test_sections_carry_the_values_of_their_keys(tmp_path: Path) -> None:
    cfg = make_config(output_dir=str(tmp_path / "runs" / "r1"), per_device_train_batch_size=3,
                      gradient_accumulation_steps=2, seed=7, learning_rate=1e-4, s3_uri="s3://bkt/p",
                      wandb_group=None, n_best_size=5, max_train_steps=9)
    assert (cfg.optimizer.learning_rate, cfg.storage.store_uri, cfg.decode.n_best_size,
            cfg.schedule.max_train_steps) == (1e-4, "s3://bkt/p", 5, 9)
    assert cfg.run.resolved_run_name == cfg.resolved_wandb_group == "r1"
    assert "learning_rate: 0.0001" in config_yaml(cfg)
    # Earlier checkpoints recorded exactly these keys; another set would refuse every one of them on resume.
    assert cfg.data_order.key(4) == {
        "seed": 7, "per_device_train_batch_size": 3, "gradient_accumulation_steps": 2, "global_batch_size": 24,
        "group_by_length": True, "max_seq_length": 384, "doc_stride": 128, "max_train_samples": None,
        "train_file": None, "dataset_name": None}
    with pytest.raises(ConfigError, match="unknown key"):
        make_config(learning_rat=1.0)


def test_the_saved_config_hides_secrets(tmp_path: Path) -> None:
    cfg = make_config(output_dir=str(tmp_path), s3_sse="aws:kms", s3_sse_kms_key_id="key-id-that-is-secret")
    assert "key-id-that-is-secret" not in config_yaml(cfg)
