"""Signal handling: the first signal asks for a checkpoint, a duplicate is ignored, a later one exits at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from qa.lifecycle.preemption import DUPLICATE_WINDOW_S


def _run(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=60)


def test_first_signal_sets_the_flag_and_a_duplicate_is_ignored() -> None:
    proc = _run("""
        import os, signal
        from qa.lifecycle.preemption import PreemptionHandler
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
        from qa.lifecycle.preemption import PreemptionHandler
        h = PreemptionHandler().install()
        os.kill(os.getpid(), signal.SIGTERM)
        h.received_at -= {DUPLICATE_WINDOW_S} + 1  # as if the first signal came a while ago
        os.kill(os.getpid(), signal.SIGTERM)
        print("still running")
    """)
    assert proc.returncode == 128 + 15
    assert "still running" not in proc.stdout


def test_ctrl_c_stops_like_a_preemption_but_exits_130_without_requeue() -> None:
    proc = _run("""
        import os, signal, types
        from qa.lifecycle.preemption import PreemptionHandler
        h = PreemptionHandler().install()
        one_rank = types.SimpleNamespace(device="cpu", num_processes=1)
        print(h.should_stop(one_rank), h.interrupted, h.exit_code)
        os.kill(os.getpid(), signal.SIGINT)
        print(h.should_stop(one_rank), h.interrupted, h.exit_code)
        h2 = PreemptionHandler().install()
        os.kill(os.getpid(), signal.SIGTERM)
        print(h2.should_stop(one_rank), h2.interrupted, h2.exit_code)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:3] == ["False False 42", "True True 130", "True False 42"]
    assert "KeyboardInterrupt" not in proc.stderr


def test_a_second_ctrl_c_exits_at_once_even_moments_later() -> None:
    proc = _run("""
        import os, signal
        from qa.lifecycle.preemption import PreemptionHandler
        PreemptionHandler().install()
        os.kill(os.getpid(), signal.SIGINT)
        print("first one: finishing the step", flush=True)
        os.kill(os.getpid(), signal.SIGINT)  # within the duplicate window: still a deliberate second Ctrl-C
        print("still running")
    """)
    assert proc.returncode == 130
    assert proc.stdout.strip() == "first one: finishing the step"
    assert proc.stderr == ""  # no traceback
