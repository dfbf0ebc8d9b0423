"""train.py's ``main()`` called in the test process: for checks where a subprocess would add nothing but its
start-up (refusals before any write, dry runs, argument errors). A pytest plugin (tests/conftest.py loads it)."""

from __future__ import annotations

import gc
import importlib.util
import logging
import signal
import warnings
from collections.abc import Callable, Iterator

import pytest

from fixtures import REPO


@pytest.fixture(scope="module")
def train_main() -> Iterator[Callable[[list[str]], int]]:
    """``main(argv) -> exit status``, as ``python train.py ARGV`` in one process would end; the Accelerator state a
    call made is reset after it, and what importing train.py sets up process-wide is undone after the module."""
    from accelerate.state import AcceleratorState, GradientState

    handler, show = signal.getsignal(signal.SIGINT), warnings.showwarning
    spec = importlib.util.spec_from_file_location("train_in_process", REPO / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    gc.enable()  # importing train.py pauses the collector until main() runs (startup.prepare_process)

    def main(argv: list[str]) -> int:
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        try:
            return module.main(argv)
        finally:
            AcceleratorState._reset_state(True)
            GradientState._reset_state()
            # basicConfig gave the root logger a handler on this test's captured stderr, which the next test's
            # capture closes: the next call configures its own.
            for handler in [h for h in root.handlers if h not in handlers]:
                root.removeHandler(handler)
            root.setLevel(level)

    yield main
    gc.unfreeze()  # what main() froze (startup.imports_done) is collectable again in this test process
    signal.signal(signal.SIGINT, handler)
    warnings.showwarning = show
