"""The trainer: run set-up (``setup``), the training loop (``loop``), evaluation during training (``evaluation``),
export (``export``), preemption signals (``preemption``) and throughput accounting (``perf``).
"""
