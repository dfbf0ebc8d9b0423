"""Every eval feature reaches rank 0 exactly once, in feature order, for any rank/batch/feature count."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fixtures import REPO, base_env, free_port, make_tiny_model
from qa.distributed.gather import PAD_FEATURE, CoverageError, check_coverage, eval_batches


@pytest.mark.parametrize("n", [1, 2, 7, 16, 33])
@pytest.mark.parametrize("bs", [1, 3, 8])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_eval_batches_cover_every_feature_once(n: int, bs: int, world: int) -> None:
    lengths = np.random.default_rng(n * bs).integers(10, 384, size=n)
    per_rank = [eval_batches(lengths, bs, world, r) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1  # same number of collectives on every rank
    seen = [i for batches in per_rank for b in batches for i in b if i != PAD_FEATURE]
    assert sorted(seen) == list(range(n))
    for batches in per_rank:
        for b in batches:
            if b != [PAD_FEATURE]:
                assert len(b) <= bs and PAD_FEATURE not in b
                # sorted by length inside the order, so batches pad little
                assert list(lengths[b]) == sorted(lengths[b], reverse=True)


def test_coverage_check_names_missing_and_duplicated() -> None:
    check_coverage(np.array([1, 1, 1]))
    with pytest.raises(CoverageError, match=r"1 missing \(e.g. \[1\]\), 1 duplicated \(e.g. \[2\]\)"):
        check_coverage(np.array([1, 0, 2]))


@pytest.mark.slow
def test_gather_under_two_processes(tmp_path: Path) -> None:
    model = make_tiny_model(tmp_path / "tiny")
    out = tmp_path / "gather.json"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--multi_gpu",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(REPO / "tests" / "support" / "dist_eval_worker.py"), str(model), str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=base_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert [(r["n"], r["bs"]) for r in results] == [(7, 2), (1, 4), (3, 4), (10, 3), (5, 1)]
    assert all(r["ok"] for r in results), results
