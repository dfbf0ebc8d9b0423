"""qa.checkpoint.s3 against a real SeaweedFS server: no mocks, the server is stopped and killed for real."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from qa.checkpoint.manifest import MANIFEST_NAME
from qa.checkpoint.s3 import S3Store, parse_s3_uri
from qa.checkpoint.store import CorruptObjectError, StorageError, UploadError
from qa.checkpoint.uploader import BackgroundUploader
from s3_fixtures import SECRET_SENTINEL, S3TestServer
from store_tools import download_dir

MiB = 1024 * 1024
RUN = "run-1/checkpoints"


@pytest.fixture(autouse=True)
def _no_aws_leaks(isolated_aws_env: None) -> None:
    """Every test here runs without ~/.aws or instance metadata."""


@pytest.fixture
def server_up_after(s3_server: S3TestServer) -> Iterator[S3TestServer]:
    """For tests that stop the shared server: it is running again afterwards, pass or fail."""
    yield s3_server
    s3_server.ensure_running()


def make_checkpoint(root: Path, *, big_mib: int = 0) -> Path:
    """A checkpoint-like tree: nested files, an empty file, optional big file, COMPLETE marker."""
    (root / "tokenizer").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model": "tiny", "hidden": 8}))
    (root / "tokenizer" / "vocab.txt").write_text("\n".join(f"tok{i}" for i in range(500)))
    (root / "tokenizer" / "empty.txt").write_bytes(b"")
    (root / "rng_state_0.pth").write_bytes(os.urandom(4096))
    if big_mib:
        (root / "model.safetensors").write_bytes(os.urandom(big_mib * MiB))
    (root / "COMPLETE").write_text("ok")
    return root


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    # Bounded polling of an externally observable condition (log records, server state).
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


def record_s3_calls(store: S3Store) -> list[tuple[str, str]]:
    """(operation, key) of every request the store's client makes, in order (incl. transfer threads)."""
    calls: list[tuple[str, str]] = []
    lock = threading.Lock()

    def hook(params: dict[str, Any], model: Any, **_: Any) -> None:
        with lock:
            calls.append((model.name, params.get("Key", "")))

    store.client.meta.events.register("before-parameter-build.s3", hook)
    return calls


def same_tree(a: Path, b: Path) -> bool:
    files_a = {p.relative_to(a).as_posix(): p.read_bytes() for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b).as_posix(): p.read_bytes() for p in b.rglob("*") if p.is_file()}
    files_b.pop(MANIFEST_NAME, None)
    return files_a == files_b


def test_parse_s3_uri() -> None:
    assert parse_s3_uri("s3://bucket/a/b/") == ("bucket", "a/b")
    assert parse_s3_uri("s3://my-bucket.x") == ("my-bucket.x", "")
    for bad in ("bucket/a", "s3://", "s3:///a", "S3://bucket/a", "s3://Bad_Bucket/a", "s3://b/a//c", "s3://bkt/../x"):
        with pytest.raises(ValueError):
            parse_s3_uri(bad)


def test_sse_and_kms_args_are_built() -> None:
    kms = S3Store("s3://bucket/p", sse="aws:kms", sse_kms_key_id="alias/ckpt", endpoint_url="http://127.0.0.1:9")
    args = kms.upload_extra_args("ab" * 32)
    assert args["ServerSideEncryption"] == "aws:kms"
    assert args["SSEKMSKeyId"] == "alias/ckpt"
    assert args["ChecksumAlgorithm"] == "SHA256" and args["Metadata"] == {"sha256": "ab" * 32}
    assert "ServerSideEncryption" not in S3Store("s3://bucket/p").upload_extra_args("00")
    with pytest.raises(ValueError):
        S3Store("s3://bucket/p", sse="AES128")
    with pytest.raises(ValueError):
        S3Store("s3://bucket/p", sse="AES256", sse_kms_key_id="k")


def test_uploader_gives_up_at_once_on_a_vanished_local_dir(tmp_path: Path) -> None:
    # Nothing listens on port 9: the upload fails before any network traffic anyway.
    store = S3Store("s3://bucket/p", endpoint_url="http://127.0.0.1:9", aws_access_key_id="a", aws_secret_access_key="b")
    with BackgroundUploader(store, deadline_s=600, base_delay_s=30) as uploader:
        uri = uploader.submit(tmp_path / "rotated-away", "ckpt")
        with pytest.raises(UploadError) as err:
            uploader.wait(timeout_s=10)
    assert err.value.missing == [uri] and uploader.failed() == [uri]


@pytest.mark.s3
def test_round_trip_multipart_manifest_last(s3_server: S3TestServer, s3_bucket: str, tmp_path: Path) -> None:
    store = s3_server.store(f"s3://{s3_bucket}/exp", multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    store.check()
    src = make_checkpoint(tmp_path / "step_0000100", big_mib=12)
    calls = record_s3_calls(store)

    manifest = store.upload_dir(src, f"{RUN}/step_0000100", metadata={"step": 100, "epoch": 0.5})

    assert set(manifest["files"]) == {
        "config.json", "tokenizer/vocab.txt", "tokenizer/empty.txt", "rng_state_0.pth", "model.safetensors", "COMPLETE",
    }
    big = manifest["files"]["model.safetensors"]
    assert big["size"] == 12 * MiB
    assert big["sha256"] == hashlib.sha256((src / "model.safetensors").read_bytes()).hexdigest()
    assert manifest["metadata"] == {"step": 100, "epoch": 0.5}
    # The 12 MiB file really went multipart (3 parts of <= 5 MiB) ...
    ops = [op for op, _ in calls]
    assert ops.count("CreateMultipartUpload") == 1 and ops.count("UploadPart") == 3
    # ... and the manifest was the very last object written.
    writes = [(op, key) for op, key in calls if op in ("PutObject", "CompleteMultipartUpload")]
    assert writes[-1] == ("PutObject", f"exp/{RUN}/step_0000100/{MANIFEST_NAME}")
    assert len(writes) == len(manifest["files"]) + 1

    # An upload without manifest (e.g. interrupted) does not count as a checkpoint.
    store.client.put_object(Bucket=s3_bucket, Key=f"exp/{RUN}/step_0000200/config.json", Body=b"{}")
    small = store.upload_dir(make_checkpoint(tmp_path / "step_0000050"), f"{RUN}/step_0000050")
    assert store.list_complete(RUN) == ["step_0000050", "step_0000100"]
    assert store.list_complete("run-2/checkpoints") == []
    assert f"{RUN}/step_0000200/config.json" in store.list_keys("run-1")
    assert f"{RUN}/step_0000100/{MANIFEST_NAME}" in store.list_keys()

    dest = tmp_path / "restored" / "step_0000100"
    assert download_dir(store, f"{RUN}/step_0000100", dest)["files"] == manifest["files"]
    assert same_tree(src, dest)
    assert json.loads((dest / MANIFEST_NAME).read_text())["metadata"]["step"] == 100
    # Re-uploading a downloaded checkpoint skips its manifest.json instead of uploading it as data.
    assert MANIFEST_NAME not in store.upload_dir(dest, "copy")["files"]

    assert store.delete_prefix(f"{RUN}/step_0000050") == len(small["files"]) + 1  # + manifest
    assert store.list_complete(RUN) == ["step_0000100"]


@pytest.mark.s3
def test_download_detects_corrupted_object(s3_server: S3TestServer, s3_bucket: str, tmp_path: Path) -> None:
    store = s3_server.store(f"s3://{s3_bucket}/exp")
    src = make_checkpoint(tmp_path / "ckpt")
    store.upload_dir(src, "ckpt")
    key = "exp/ckpt/rng_state_0.pth"
    # Same size, different bytes: only the SHA-256 can tell.
    store.client.put_object(Bucket=s3_bucket, Key=key, Body=os.urandom(4096))

    dest = tmp_path / "restored"
    with pytest.raises(CorruptObjectError) as err:
        download_dir(store, "ckpt", dest)
    message = str(err.value)
    assert f"s3://{s3_bucket}/{key}" in message
    assert hashlib.sha256((src / "rng_state_0.pth").read_bytes()).hexdigest() in message  # expected digest
    assert not dest.exists(), "a failed download must not leave a partial directory behind"
    assert not list(tmp_path.glob(".restored.*")), "temporary download dir not cleaned up"

    with pytest.raises(StorageError, match="no complete upload"):
        download_dir(store, "does-not-exist", tmp_path / "other")


@pytest.mark.s3
def test_background_upload_survives_outage(
    server_up_after: S3TestServer, s3_bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = server_up_after
    store = server.store(f"s3://{s3_bucket}/exp", retry_attempts=1, connect_timeout_s=2)
    src = make_checkpoint(tmp_path / "step_0000300")
    server.stop()
    caplog.set_level(logging.WARNING, logger="qa.checkpoint")

    with BackgroundUploader(store, deadline_s=60, base_delay_s=0.05, max_delay_s=0.5) as uploader:
        t0 = time.monotonic()
        uri = uploader.submit(src, f"{RUN}/step_0000300", metadata={"step": 300})
        assert time.monotonic() - t0 < 0.5, "submit() must not wait for S3"
        assert uri == f"s3://{s3_bucket}/exp/{RUN}/step_0000300"
        assert uploader.pending() == [uri]

        with pytest.raises(UploadError) as err:
            uploader.wait(timeout_s=0.5)
        assert err.value.missing == [uri] and uri in str(err.value)
        wait_until(lambda: "retrying" in caplog.text, 10, "a retry warning")

        server.start()
        uploader.wait(timeout_s=30)
        assert uploader.pending() == [] and uploader.failed() == []
        assert uploader.completed() == [uri]

    assert store.list_complete(RUN) == ["step_0000300"]
    assert store.read_manifest(f"{RUN}/step_0000300")["metadata"] == {"step": 300}
    retries = [r for r in caplog.records if r.levelno == logging.WARNING and "retrying" in r.getMessage()]
    assert retries and uri in retries[0].getMessage()


@pytest.mark.s3
def test_server_killed_mid_multipart_then_retry(server_up_after: S3TestServer, s3_bucket: str, tmp_path: Path) -> None:
    server = server_up_after
    store = server.store(
        f"s3://{s3_bucket}/exp", multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB,
        max_concurrency=1, retry_attempts=1, connect_timeout_s=2,
    )
    src = make_checkpoint(tmp_path / "step_0000400", big_mib=12)
    sent = 0
    killed = threading.Event()

    def kill_after_first_part(nbytes: int) -> None:
        nonlocal sent
        sent += nbytes
        if sent > 6 * MiB and not killed.is_set():  # first 5 MiB part is through, second on the wire
            killed.set()
            server.stop(kill=True)

    with pytest.raises(StorageError, match="model.safetensors"):
        store.upload_dir(src, f"{RUN}/step_0000400", progress=kill_after_first_part)
    assert killed.is_set()

    server.start()
    # Files uploaded before the crash are there, but without a manifest the checkpoint is not.
    listed = store.client.list_objects_v2(Bucket=s3_bucket, Prefix=f"exp/{RUN}/step_0000400/")
    assert any(o["Key"].endswith("config.json") for o in listed.get("Contents", []))
    assert store.list_complete(RUN) == []

    with BackgroundUploader(store, deadline_s=60, base_delay_s=0.05, max_delay_s=0.5) as uploader:
        uploader.submit(src, f"{RUN}/step_0000400")
        uploader.wait(timeout_s=30)
    assert store.list_complete(RUN) == ["step_0000400"]
    download_dir(store, f"{RUN}/step_0000400", tmp_path / "restored")
    assert same_tree(src, tmp_path / "restored")


@pytest.mark.s3
def test_store_uses_standard_aws_env_chain(s3_env: dict[str, str], s3_bucket: str, tmp_path: Path) -> None:
    # No endpoint or keys passed: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... are picked up by boto3.
    # "localhost" rather than 127.0.0.1 also exercises path-style addressing for non-AWS endpoints.
    os.environ["AWS_ENDPOINT_URL"] = s3_env["AWS_ENDPOINT_URL"].replace("127.0.0.1", "localhost")
    store = S3Store(f"s3://{s3_bucket}/env")
    assert store.endpoint_url == os.environ["AWS_ENDPOINT_URL"]
    store.check()
    store.upload_dir(make_checkpoint(tmp_path / "ckpt"), "ckpt")
    assert store.list_complete() == ["ckpt"]


@pytest.mark.s3
def test_check_rejects_wrong_credentials(s3_server: S3TestServer, s3_bucket: str) -> None:
    wrong_secret = f"{SECRET_SENTINEL}-wrong"
    cases = {
        "SignatureDoesNotMatch": dict(aws_secret_access_key=wrong_secret),
        "InvalidAccessKeyId": dict(aws_access_key_id="no-such-key", aws_secret_access_key=wrong_secret),
    }
    for code, creds in cases.items():
        store = s3_server.store(f"s3://{s3_bucket}/exp", retry_attempts=1, **creds)
        with pytest.raises(StorageError) as err:
            store.check()
        message = str(err.value)
        assert "credentials were rejected" in message and code in message
        assert s3_bucket in message and s3_server.endpoint_url in message
        assert SECRET_SENTINEL not in message and s3_server.secret_key not in message


@pytest.mark.s3
def test_check_missing_bucket_and_create(s3_server: S3TestServer) -> None:
    bucket = s3_server.new_bucket_name("qa-missing")
    with pytest.raises(StorageError) as err:
        s3_server.store(f"s3://{bucket}/exp").check()
    assert bucket in str(err.value) and "s3_create_bucket: true" in str(err.value)

    store = s3_server.store(f"s3://{bucket}/exp", create_bucket=True)
    store.check()
    store.check()  # idempotent: the bucket now exists
    # The write probe cleaned up after itself.
    assert store.client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


@pytest.mark.s3
def test_sse_aes256_end_to_end(s3_server: S3TestServer, s3_bucket: str, tmp_path: Path) -> None:
    # SeaweedFS implements SSE-S3 (AES256), so this is checked on the stored objects, not just the
    # request arguments. SSE-KMS needs a KMS provider SeaweedFS does not have here (see the
    # argument-building test above).
    store = s3_server.store(f"s3://{s3_bucket}/enc", sse="AES256")
    assert store.upload_extra_args("00")["ServerSideEncryption"] == "AES256"
    store.check()
    manifest = store.upload_dir(make_checkpoint(tmp_path / "ckpt"), "ckpt")
    for rel in [*manifest["files"], MANIFEST_NAME]:
        head = store.client.head_object(Bucket=s3_bucket, Key=f"enc/ckpt/{rel}")
        assert head.get("ServerSideEncryption") == "AES256", rel
    download_dir(store, "ckpt", tmp_path / "restored")


@pytest.mark.s3
def test_secrets_never_logged_or_stored(
    s3_server: S3TestServer, s3_bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # everything, botocore and s3transfer included
    secret = s3_server.secret_key
    assert SECRET_SENTINEL in secret
    store = s3_server.store(f"s3://{s3_bucket}/exp")
    store.check()
    manifest = store.upload_dir(make_checkpoint(tmp_path / "ckpt"), "ckpt", metadata={"run": "r1"})
    download_dir(store, "ckpt", tmp_path / "restored")

    bad = s3_server.store(f"s3://{s3_bucket}/exp", aws_secret_access_key=f"{SECRET_SENTINEL}-bad", retry_attempts=1)
    messages = []
    with pytest.raises(StorageError) as err:
        bad.check()
    messages.append(str(err.value))
    with BackgroundUploader(bad, max_attempts=2, base_delay_s=0.01, max_delay_s=0.02) as uploader:
        uploader.submit(tmp_path / "ckpt", "ckpt-bad")
        with pytest.raises(UploadError) as upload_err:
            uploader.wait(timeout_s=30)
    messages.append(str(upload_err.value))
    assert "giving up" in caplog.text  # the failures were logged, with their errors

    # A secret smuggled into manifest metadata is refused rather than written.
    with pytest.raises(StorageError, match="secret"):
        store.upload_dir(tmp_path / "ckpt", "leaky", metadata={"oops": secret})
    assert store.list_complete("") == ["ckpt"]

    stored_manifest = json.dumps(store.read_manifest("ckpt"))
    weed_logs = [s3_server.log_path, *(s3_server.data_dir / "logs").iterdir()]
    server_logs = "".join(p.read_text(errors="replace") for p in weed_logs if p.is_file())
    for text in [caplog.text, json.dumps(manifest), stored_manifest, server_logs, *messages]:
        assert SECRET_SENTINEL not in text


def test_multipart_threshold_test_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    """QA_S3_MULTIPART_THRESHOLD_MIB lets the storage fault tests send checkpoints of a few MiB as multipart."""
    from qa.checkpoint.s3 import MULTIPART_ENV

    monkeypatch.delenv(MULTIPART_ENV, raising=False)
    assert S3Store("s3://bucket-a/x", region="us-east-1").transfer_config.multipart_threshold == 64 * MiB
    monkeypatch.setenv(MULTIPART_ENV, "1")
    assert S3Store("s3://bucket-a/x", region="us-east-1").transfer_config.multipart_threshold == MiB
    explicit = S3Store("s3://bucket-a/x", region="us-east-1", multipart_threshold=5 * MiB)
    assert explicit.transfer_config.multipart_threshold == 5 * MiB


def test_start_up_waits_for_a_store_that_is_down_for_moments(server_up_after: S3TestServer, s3_bucket: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Found by the fault campaign (seed 23968184): a restart during an S3 outage was refused at once as a config
    error (exit 2: a Kubernetes Job fails for good). A store refusing connections is now waited for a while."""
    import threading

    server = server_up_after
    store = server.store(f"s3://{s3_bucket}/exp", retry_attempts=1, connect_timeout_s=2)
    server.stop()
    caplog.set_level(logging.WARNING, logger="qa.checkpoint")
    back = threading.Thread(target=lambda: (wait_until(lambda: "retrying" in caplog.text, 30, "a retry warning"),
                                            server.start()))
    back.start()
    store.check()  # returns once the server is back
    back.join()
    assert "cannot reach S3" in caplog.text
    server.stop()
    t0 = time.monotonic()
    with pytest.raises(botocore.exceptions.EndpointConnectionError):  # check() says "cannot reach S3 ..."
        store._list_once_reachable("the test's bucket", wait_s=1.0)  # a wrong endpoint still fails, in time
    assert time.monotonic() - t0 < 30
    server.start()
