"""When things happen in a run: how many steps, and which steps log, evaluate and checkpoint."""
