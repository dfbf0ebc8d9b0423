"""The trainer: run set-up (``setup``), the training loop (``loop``), evaluation during training (``evaluation``),
export (``export``), preemption signals (``preemption``) and throughput accounting (``perf``); the worker's first
steps and its start-up timeline (``startup``), dying with its launcher (``watchdog``), one run per output
directory (``output_dir``).
"""
