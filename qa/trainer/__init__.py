"""The trainer: run set-up (``setup``, which hands each component its config section), the typed parts it
builds (``parts``), the training loop (``loop``, its config section in ``settings``), evaluation during training
(``evaluation``), ``--do_predict`` (``prediction``), export (``export``), preemption signals (``preemption``) and
throughput accounting (``perf``); the worker's first steps and its start-up timeline (``startup``), dying with its
launcher (``watchdog``), one run per output directory (``output_dir``).
"""
