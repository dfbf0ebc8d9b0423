"""A worker process from start to end: start-up, dying with its launcher, preemption and Ctrl-C."""
