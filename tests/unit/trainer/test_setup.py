"""Start-up (qa.trainer.setup): a storage location the backend refuses is a user's error, not a traceback."""

from __future__ import annotations

from typing import Any

import pytest

from qa.checkpoint.settings import StorageSettings
from qa.errors import ConfigError
from qa.trainer.setup import open_storage


@pytest.mark.parametrize(("uri", "sse", "named"), [
    ("s3://ab/runs", None, "invalid S3 bucket name 'ab'"),
    ("file:///mnt/nfs/ckpts", "AES256", "sse only apply to s3:// locations"),
])
def test_a_location_the_backend_refuses_is_a_config_error_before_any_rank_is_asked(
        uri: str, sse: str | None, named: str) -> None:
    settings = StorageSettings(s3_uri=uri, s3_sse=sse, s3_upload_timeout=1.0)
    # The settings did not pass the config checks (a caller that builds them itself): the backend's ValueError
    # still leaves as one line under the key's name. An object without attributes as the accelerator proves
    # that no rank was involved yet.
    no_accelerator: Any = object()
    with pytest.raises(ConfigError) as err:
        open_storage(settings, no_accelerator)
    message = str(err.value)
    assert message.startswith("s3_uri: ") and named in message and "\n" not in message
    assert err.value.__cause__ is None and err.value.__suppress_context__
