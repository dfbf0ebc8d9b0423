"""``open_store``: the backend for a location. It sits above the backends (they never import it)."""

from __future__ import annotations

from typing import Any

from qa.checkpoint.location import local_path
from qa.checkpoint.store import Store


def open_store(uri: str, **s3_options: Any) -> Store:
    """The backend for ``uri``: ``s3://bucket/prefix`` or ``file:///abs/path`` / an absolute path.

    ``s3_options`` go to S3Store; for a filesystem only ``create_bucket`` means something (create the directory).
    """
    if uri.startswith("s3://"):
        from qa.checkpoint.s3 import S3Store  # boto3 is loaded only when S3 is used

        return S3Store(uri, **s3_options)
    from qa.checkpoint.local import LocalStore

    root = local_path(uri)
    create = bool(s3_options.pop("create_bucket", False))
    unused = sorted(k for k, v in s3_options.items() if v is not None)
    if unused:
        raise ValueError(f"{', '.join(unused)} only apply to s3:// locations, not {uri!r}")
    return LocalStore(root, create=create)
