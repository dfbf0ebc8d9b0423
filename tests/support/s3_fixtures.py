"""pytest fixtures backed by a real local S3 server (SeaweedFS ``weed mini``, see qa/s3_local.py).

Use them from a test module (or a conftest) by importing the fixture names; with no
tests/__init__.py pytest puts tests/ itself on sys.path, so::

    from s3_fixtures import s3_bucket, s3_env, s3_server  # noqa: F401

(``from tests.s3_fixtures import ...`` where tests/ is a package; test_storage.py tries both).

Fixtures:
  * ``s3_server`` (session): one running :class:`S3TestServer` (endpoint_url, access_key,
    secret_key, env(), stop()/start() on the same port and data dir, create_bucket(), store()).
  * ``s3_bucket``: a fresh, empty bucket name; restarts the server first if a test left it down.
  * ``s3_env``: points the standard boto3 chain (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...) at the
    server for this test, isolated from ~/.aws and instance metadata; returns the variables
    (pass them on to subprocesses, e.g. a training run with ``s3_uri``).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from local_s3 import LocalS3Server
from qa.checkpoint.s3 import S3Store

logger = logging.getLogger(__name__)

# Tests assert this marker never shows up in logs, messages or manifests.
SECRET_SENTINEL = "SENTINEL-secret-do-not-log"


class S3TestServer(LocalS3Server):
    """A LocalS3Server with helpers for tests."""

    def ensure_running(self) -> None:
        """Bring the server back if a test stopped it (e.g. an outage test that failed midway)."""
        if not self.running:
            logger.warning("local S3 server was down; restarting it")
            self.start()

    def new_bucket_name(self, prefix: str = "qa-test") -> str:
        return f"{prefix}-{secrets.token_hex(6)}"

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name by default) and return its name."""
        bucket = name or self.new_bucket_name()
        self.store(f"s3://{bucket}", create_bucket=True).check()
        return bucket

    def store(self, uri: str, **kwargs: Any) -> S3Store:
        """An S3Store for this server with explicit credentials (no environment needed)."""
        kwargs.setdefault("endpoint_url", self.endpoint_url)
        kwargs.setdefault("region", self.region)
        kwargs.setdefault("aws_access_key_id", self.access_key)
        kwargs.setdefault("aws_secret_access_key", self.secret_key)
        return S3Store(uri, **kwargs)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3TestServer]:
    server = S3TestServer(
        tmp_path_factory.mktemp("seaweedfs"),
        access_key=f"qa-test-{secrets.token_hex(4)}",
        secret_key=f"{SECRET_SENTINEL}-{secrets.token_hex(8)}",
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def isolated_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the developer's ~/.aws, profiles and the EC2 metadata service out of tests."""
    missing = tmp_path_factory.getbasetemp() / "no-aws-config"
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(missing))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(missing))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def s3_bucket(s3_server: S3TestServer) -> str:
    s3_server.ensure_running()
    return s3_server.create_bucket()


@pytest.fixture
def s3_env(s3_server: S3TestServer, isolated_aws_env: None, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    s3_server.ensure_running()
    env = s3_server.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env
