"""Pre-flight: launch checks (``checks``), the ZeRO memory model (``memory``), data and step counts (``counts``),
the dry-run report (``report``) and what the launch scripts ask (``launch``); the window length a model takes
(``limits``), accelerate's one-process launcher (``process_count``) and DeepSpeed's JIT-built ops (``ops``).
"""
