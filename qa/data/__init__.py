"""Data: reading SQuAD-format files (``formats``), sliding-window features (``features``), batch order (``sampler``),
the data section of the config (``settings``)."""
