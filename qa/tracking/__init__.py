"""Tracking: the fan-out to console, metrics.jsonl and W&B (``tracker``), the W&B run itself and the only
import of wandb (``wandb_sink``), console lines (``console``), secret redaction (``redaction``), the run
environment (``environment``), the tracking section of the config (``settings``).
"""
