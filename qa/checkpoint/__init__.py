"""Checkpoints: what is saved (``state``), saving/rotating/resuming (``manager``), where copies live (``store``:
the protocol; ``s3``, ``local``: backends) and the background ``uploader``.
"""
