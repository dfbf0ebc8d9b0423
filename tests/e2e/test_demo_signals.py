"""tools/demo.py stopped by SIGTERM or Ctrl-C (SIGINT) takes its SeaweedFS server down with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from fixtures import REPO, base_env

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_demo_stops_its_s3_server_on_a_signal(sig: signal.Signals, tmp_path: Path) -> None:
    env = {**base_env(tmp_path), "QA_DEMO_OUTPUT_DIR": str(tmp_path / "demo_out"), "TMPDIR": str(tmp_path)}
    demo = subprocess.Popen([sys.executable, "-u", str(REPO / "tools" / "demo.py")], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert demo.stdout is not None
        seen = []
        for line in demo.stdout:  # blocks until the demo says the server is up (or exits)
            seen.append(line)
            if line.startswith("local S3 (SeaweedFS) at"):
                break
        else:
            pytest.fail("the demo never started its server:\n" + "".join(seen[-30:]))
        servers = [p for p in psutil.Process(demo.pid).children(recursive=True)
                   if "weed" in " ".join(p.cmdline())]
        assert servers, "no SeaweedFS process under the demo"
        os.kill(demo.pid, sig)  # the demo only, as `kill PID` does (Ctrl-C would signal the whole group)
        demo.communicate(timeout=120)
        assert demo.returncode != 0
        gone, alive = psutil.wait_procs(servers, timeout=30)
        assert not alive, f"SeaweedFS still running after {sig.name}: {[p.pid for p in alive]}"
        # Nor anything else it started: the launcher and its workers (sessions of their own) inherit its
        # environment. The signal came while the launcher started; an exception there once left them running.
        _, alive = psutil.wait_procs(_started_by(str(tmp_path / "demo_out")), timeout=30)
        assert not alive, f"still running after {sig.name}: {[p.cmdline()[:3] for p in alive]}"
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()


def _started_by(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("QA_DEMO_OUTPUT_DIR") == marker:
                found.append(proc)
        except psutil.Error:  # gone, or not ours to read
            continue
    return found
