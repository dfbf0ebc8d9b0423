"""Tracking: the fan-out to console, metrics.jsonl and W&B (``tracker``), console lines (``console``), secret
redaction (``redaction``), the run environment (``environment``).
"""
