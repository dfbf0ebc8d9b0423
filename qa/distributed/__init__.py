"""Running on many ranks: the Accelerator and DeepSpeed (``accelerator``), rank-0-then-broadcast (``rank_zero``),
the evaluation gather (``gather``), the distributed section of the config (``settings``).
"""
