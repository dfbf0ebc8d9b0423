"""The trainer: the run's assembly (``setup``: accelerator, output_dir claim, storage, resume, tracker, model), the
run's data (``inputs``), the typed parts they build (``parts``), the training loop (``loop``; when it logs,
evaluates and checkpoints is ``qa.schedule``), evaluation during training (``evaluation``), ``--do_predict``
(``prediction``), export (``export``) and throughput accounting (``perf``). Process start-up, signals and the
watchdog are ``qa.lifecycle``; output_dir ownership is ``qa.checkpoint.output_dir``.
"""
