"""Side effects stay at the edge: one module of qa/ imports wandb (inside functions only), one imports boto3."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import qa

QA_ROOT = Path(qa.__file__).parent


def _imports(tree: ast.AST, package: str) -> list[ast.stmt]:
    """The import statements of ``tree`` (anywhere in it, also inside functions) that name ``package``."""
    found: list[ast.stmt] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(name.split(".")[0] == package for name in names):
            found.append(node)
    return found


def _modules_importing(package: str) -> set[str]:
    return {
        path.relative_to(QA_ROOT.parent).as_posix()
        for path in QA_ROOT.rglob("*.py")
        if _imports(ast.parse(path.read_text(), filename=str(path)), package)
    }


def test_only_the_wandb_sink_imports_wandb_and_only_inside_functions() -> None:
    assert _modules_importing("wandb") == {"qa/tracking/wandb_sink.py"}
    sink = ast.parse((QA_ROOT / "tracking" / "wandb_sink.py").read_text())
    inside_functions = {
        id(node)
        for fn in ast.walk(sink) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(fn)
    }
    # Never at import time: importing the sink (as the dry run does) must not load wandb.
    wandb_imports = _imports(sink, "wandb")
    assert len(wandb_imports) == 2 and all(id(node) in inside_functions for node in wandb_imports)


def test_importing_tracking_or_the_dry_run_does_not_load_wandb() -> None:
    code = ("import sys, qa.tracking.tracker, qa.tracking.wandb_sink, qa.preflight.report; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'wandb'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=QA_ROOT.parent)
    assert done.stdout.strip() == "[]"


def test_only_the_s3_store_imports_boto3() -> None:
    assert _modules_importing("boto3") == {"qa/checkpoint/s3.py"}
    assert _modules_importing("botocore") <= {"qa/checkpoint/s3.py"}
