"""The model: loading tokenizer and model (``build``), the QA loss (``loss``), optimizer and schedule (``optim``),
the model and optimizer sections of the config (``settings``)."""
