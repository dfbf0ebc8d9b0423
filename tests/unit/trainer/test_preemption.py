"""Signal handling: the first signal asks for a checkpoint, a duplicate is ignored, a later one exits at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from qa.trainer.preemption import DUPLICATE_WINDOW_S


def _run(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=60)


def test_first_signal_sets_the_flag_and_a_duplicate_is_ignored() -> None:
    proc = _run("""
        import os, signal
        from qa.trainer.preemption import PreemptionHandler
        h = PreemptionHandler().install()
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)  # forwarded copy, moments later
        print("alive", h.signal_received == signal.SIGUSR1)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "alive True"


def test_a_later_second_signal_exits_at_once() -> None:
    proc = _run(f"""
        import os, signal, time
        from qa.trainer.preemption import PreemptionHandler
        h = PreemptionHandler().install()
        os.kill(os.getpid(), signal.SIGTERM)
        h.received_at -= {DUPLICATE_WINDOW_S} + 1  # as if the first signal came a while ago
        os.kill(os.getpid(), signal.SIGTERM)
        print("still running")
    """)
    assert proc.returncode == 128 + 15
    assert "still running" not in proc.stdout
