"""on_rank_zero on 2 real CPU ranks (gloo): results, user errors and program errors reach every rank."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fixtures import REPO, base_env, free_port


def test_on_rank_zero_two_ranks(tmp_path: Path) -> None:
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = {**base_env(tmp_path), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "PYTHONPATH": str(REPO)}
        procs.append(subprocess.Popen([sys.executable, str(REPO / "tests" / "support" / "rank_zero_worker.py"),
                                       str(tmp_path / "out")], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out
    r0, r1 = (json.loads((tmp_path / f"out.{r}").read_text()) for r in range(2))
    assert r0["world"] == r1["world"] == 2
    assert r0["result"] == r1["result"] == {"chosen_by": 0}  # computed once, on rank 0
    assert r0["broadcast"] == r1["broadcast"] == "id-from-0"
    msg = "resume_from_checkpoint: /x is not a complete checkpoint"
    assert r0["user_error"] == [msg, False]  # rank 0 reports it
    assert r1["user_error"] == [msg, True]  # the same error, marked as already reported
    assert r0["bug"][0] == "KeyError"  # rank 0 keeps the real exception (and its traceback)
    assert r1["bug"][0] == "RankZeroError" and "KeyError" in r1["bug"][1]
    assert r0["after"] == r1["after"] == 7


def test_on_rank_zero_single_process_is_a_plain_call() -> None:
    from types import SimpleNamespace

    from qa.distributed.rank_zero import on_rank_zero

    assert on_rank_zero(SimpleNamespace(num_processes=1), lambda: 3) == 3
