"""Data: reading SQuAD-format files (``formats``), sliding-window features (``features``), batch order (``sampler``)."""
