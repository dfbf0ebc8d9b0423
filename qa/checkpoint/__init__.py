"""Checkpoints: what is saved (``state``), saving, rotating and publishing (``manager``, ``rotation``), which
checkpoint every node resumes from (``resume``), each node's share of one (``parts``), loading at another world
size or weights only (``reshard``, ``loading``), and where copies live: ``store`` (the ``Store`` protocol, the
manifest, ``open_store``), ``objects`` (``ObjectStore``, the protocol over a few primitives), the backends
``local`` and ``s3``, and the background ``uploader``. To add a storage backend, subclass ``ObjectStore`` and
add its scheme to ``STORE_SCHEMES``, ``check_location`` and ``open_store`` in ``store``.
"""
