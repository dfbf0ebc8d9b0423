"""The Store contract, run against every backend (a directory; a real SeaweedFS bucket), plus open_store and
the filesystem backend's own start-up checks. No mocks: objects are corrupted and planted for real."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qa.checkpoint.backends import open_store
from qa.checkpoint.local import LocalStore
from qa.checkpoint.location import STORE_SCHEMES, check_location, is_store_uri
from qa.checkpoint.manifest import MANIFEST_NAME
from qa.checkpoint.s3 import S3Store
from qa.checkpoint.store import CorruptObjectError, StorageError, UploadError
from qa.checkpoint.uploader import BackgroundUploader
from store_tools import download_dir

RUN = "run-1/checkpoints"
Tree = Callable[..., Path]


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_round_trip(backend: Any, tree: Tree, tmp_path: Path) -> None:
    store = backend.store
    src = tree(tmp_path / "step_0000100")
    manifest = store.upload_dir(src, f"{RUN}/step_0000100", metadata={"global_step": 100, "epoch": 1})

    assert set(manifest["files"]) == {"config.json", "tokenizer/vocab.txt", "tokenizer/empty.txt",
                                      "rng_state_0.pth", "COMPLETE"}
    rng = (src / "rng_state_0.pth").read_bytes()
    assert manifest["files"]["rng_state_0.pth"] == {"size": 4096, "sha256": hashlib.sha256(rng).hexdigest()}
    assert manifest["files"]["tokenizer/empty.txt"]["size"] == 0
    assert store.read_manifest(f"{RUN}/step_0000100")["metadata"] == {"global_step": 100, "epoch": 1}
    assert store.list_complete(RUN) == ["step_0000100"]
    assert store.uri_for(f"{RUN}/step_0000100").startswith(store.uri)
    # Exactly the files plus the manifest: no temporary leftovers.
    assert store.list_keys(RUN) == sorted([f"{RUN}/step_0000100/{rel}" for rel in manifest["files"]]
                                          + [f"{RUN}/step_0000100/{MANIFEST_NAME}"])

    dest = tmp_path / "restored" / "step_0000100"
    assert download_dir(store, f"{RUN}/step_0000100", dest)["files"] == manifest["files"]
    got = files_of(dest)
    assert json.loads(got.pop(MANIFEST_NAME))["files"] == manifest["files"]
    assert got == files_of(src)
    # Re-uploading a downloaded checkpoint skips its manifest.json instead of uploading it as data.
    assert MANIFEST_NAME not in store.upload_dir(dest, "copy")["files"]
    with pytest.raises(StorageError, match="not an empty directory"):
        download_dir(store, f"{RUN}/step_0000100", dest)


def test_manifest_is_written_last_and_dropped_first(backend: Any, tree: Tree, tmp_path: Path) -> None:
    store = backend.store
    key = f"{RUN}/step_0000001"
    seen: list[tuple[list[str], bool]] = []
    lock = threading.Lock()

    def observe(_: int) -> None:  # called while file bytes are being written (from transfer threads on S3)
        try:
            store.read_manifest(key)
            readable = True
        except StorageError:
            readable = False
        with lock:
            seen.append((store.list_complete(RUN), readable))

    store.upload_dir(tree(tmp_path / "a"), key, progress=observe)
    first = list(seen)
    assert first and all(names == [] and not readable for names, readable in first)
    assert store.list_complete(RUN) == ["step_0000001"]

    # Re-uploading over a complete upload: the old manifest disappears before any object is replaced.
    seen.clear()
    newer = tree(tmp_path / "b")
    store.upload_dir(newer, key, metadata={"v": 2}, progress=observe)
    assert seen and all(names == [] and not readable for names, readable in seen)
    assert store.read_manifest(key)["metadata"] == {"v": 2}
    download_dir(store, key, tmp_path / "got")
    assert (tmp_path / "got" / "rng_state_0.pth").read_bytes() == (newer / "rng_state_0.pth").read_bytes()


def test_interrupted_upload_is_not_complete(backend: Any, tree: Tree, tmp_path: Path) -> None:
    store = backend.store

    def crash(_: int) -> None:
        raise RuntimeError("crash mid-upload")

    with pytest.raises((RuntimeError, StorageError)):
        store.upload_dir(tree(tmp_path / "a", size=3 * 1024 * 1024), f"{RUN}/step_0000002", progress=crash)
    assert store.list_complete(RUN) == []
    with pytest.raises(StorageError, match="no complete upload"):
        store.read_manifest(f"{RUN}/step_0000002")
    with pytest.raises(StorageError, match="no complete upload"):
        download_dir(store, f"{RUN}/step_0000002", tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_corrupted_or_missing_object_is_refused_by_name(backend: Any, tree: Tree, tmp_path: Path) -> None:
    store = backend.store
    src = tree(tmp_path / "ckpt")
    store.upload_dir(src, "ckpt")
    # Same size, different bytes: only the SHA-256 can tell.
    backend.write_raw("ckpt/rng_state_0.pth", b"x" * 4096)

    dest = tmp_path / "restored"
    with pytest.raises(CorruptObjectError) as err:
        download_dir(store, "ckpt", dest)
    assert store.uri_for("ckpt/rng_state_0.pth") in str(err.value)
    assert hashlib.sha256((src / "rng_state_0.pth").read_bytes()).hexdigest() in str(err.value)  # expected digest
    assert not dest.exists(), "a failed download must not leave a partial directory behind"
    assert not list(tmp_path.glob(".restored.*")), "temporary download dir not cleaned up"

    backend.delete_raw("ckpt/config.json")
    with pytest.raises(StorageError) as err:
        download_dir(store, "ckpt", dest)
    assert store.uri_for("ckpt/config.json") in str(err.value)
    assert not dest.exists()


def test_malformed_manifest_is_refused(backend: Any, tree: Tree, tmp_path: Path) -> None:
    store = backend.store
    store.upload_dir(tree(tmp_path / "ckpt"), "ckpt")
    backend.write_raw(f"ckpt/{MANIFEST_NAME}", b"{not json")
    with pytest.raises(CorruptObjectError, match="not a valid manifest"):
        store.read_manifest("ckpt")
    # A manifest must never steer a download outside its target directory.
    evil = {"format": 1, "files": {"../escaped": {"size": 2, "sha256": "0" * 64}}, "metadata": {}}
    backend.write_raw(f"ckpt/{MANIFEST_NAME}", json.dumps(evil).encode())
    with pytest.raises(CorruptObjectError, match="unsafe path"):
        download_dir(store, "ckpt", tmp_path / "restored")
    assert not (tmp_path / "escaped").exists()
    backend.write_raw(f"ckpt/{MANIFEST_NAME}", json.dumps({"files": {"a": {"size": 1}}}).encode())
    with pytest.raises(CorruptObjectError, match="invalid entry"):
        store.read_manifest("ckpt")


def test_an_upload_assembled_from_parts(backend: Any, tree: Tree, tmp_path: Path) -> None:
    """The pieces several writers use (one part per node): files without a manifest, records, the manifest last,
    and a partial download that verifies each file and leaves what is already there alone."""
    store = backend.store
    src = tree(tmp_path / "src")
    first = store.upload_files(src, "ckpt", ["config.json", "rng_state_0.pth"])
    assert first["rng_state_0.pth"]["size"] == 4096
    assert store.list_complete("") == [] and store.read_record("ckpt/parts/a.json") is None
    store.put_record("ckpt/parts/a.json", {"files": first, "save_id": "s"})
    assert store.read_record("ckpt/parts/a.json") == {"files": first, "save_id": "s"}
    second = store.upload_files(src, "ckpt", ["tokenizer/vocab.txt", "COMPLETE"])
    manifest = store.write_manifest("ckpt", {**first, **second}, {"global_step": 1})
    assert store.list_complete("") == ["ckpt"] and store.read_manifest("ckpt")["files"] == manifest["files"]

    dest = tmp_path / "node" / "ckpt"
    dest.mkdir(parents=True)
    (dest / "local-only").write_text("kept")
    store.download_files("ckpt", dest, manifest, ["config.json", "tokenizer/vocab.txt"])
    assert files_of(dest) == {"local-only": b"kept", "config.json": (src / "config.json").read_bytes(),
                              "tokenizer/vocab.txt": (src / "tokenizer" / "vocab.txt").read_bytes()}
    backend.write_raw("ckpt/rng_state_0.pth", b"x" * 4096)
    with pytest.raises(CorruptObjectError) as err:
        store.download_files("ckpt", dest, manifest, ["rng_state_0.pth"])
    assert store.uri_for("ckpt/rng_state_0.pth") in str(err.value)
    assert sorted(files_of(dest)) == ["config.json", "local-only", "tokenizer/vocab.txt"], "nothing half-written"
    with pytest.raises(StorageError, match="not in the manifest"):
        store.download_files("ckpt", dest, manifest, ["tokenizer/empty.txt"])
    store.drop_manifest("ckpt")
    assert store.list_complete("") == []


def test_list_complete_ignores_prefixes_without_manifest(backend: Any, tree: Tree, tmp_path: Path) -> None:
    store = backend.store
    store.upload_dir(tree(tmp_path / "a"), f"{RUN}/step_0000100")
    store.upload_dir(tree(tmp_path / "b"), f"{RUN}/step_0000050")
    backend.write_raw(f"{RUN}/step_0000200/config.json", b"{}")  # an upload that never got its manifest
    backend.write_raw(f"{RUN}/loose-object", b"x")
    assert store.list_complete(RUN) == ["step_0000050", "step_0000100"]
    assert store.list_complete("run-2/checkpoints") == []
    assert f"{RUN}/step_0000200/config.json" in store.list_keys("run-1")


def test_delete_prefix(backend: Any, tree: Tree, tmp_path: Path) -> None:
    store = backend.store
    kept = store.upload_dir(tree(tmp_path / "a"), f"{RUN}/step_0000001")
    gone = store.upload_dir(tree(tmp_path / "b"), f"{RUN}/step_0000002")
    assert store.delete_prefix(f"{RUN}/step_0000002") == len(gone["files"]) + 1  # + manifest
    assert store.list_complete(RUN) == ["step_0000001"]
    assert not [k for k in store.list_keys(RUN) if "step_0000002" in k]
    assert store.delete_prefix(f"{RUN}/step_0000002") == 0
    assert download_dir(store, f"{RUN}/step_0000001", tmp_path / "kept")["files"] == kept["files"]
    backend.write_raw(f"{RUN}/step_0000003/part", b"x")  # leftovers of a crashed upload go too
    assert store.delete_prefix(f"{RUN}/step_0000003") == 1
    assert all(k.startswith(f"{RUN}/step_0000001/") for k in store.list_keys(RUN))
    with pytest.raises(ValueError):
        store.delete_prefix("")


def test_keys_never_leave_the_store(backend: Any, tree: Tree, tmp_path: Path) -> None:
    store = backend.store
    for bad in ("../outside", "a/../../b", "./x"):
        with pytest.raises(ValueError):
            store.upload_dir(tree(tmp_path / bad.replace("/", "_").replace(".", "d")), bad)
        with pytest.raises(ValueError):
            store.delete_prefix(bad)
    assert not (tmp_path / "outside").exists()
    with pytest.raises(ValueError, match="non-empty key prefix"):  # the root holds uploads, it is not one
        store.upload_dir(tree(tmp_path / "root"), "/")
    assert store.list_keys() == []


@pytest.mark.s3
def test_s3_delete_removes_manifest_before_objects(s3_server: Any, s3_bucket: str, tree: Tree, tmp_path: Path,
                                                   isolated_aws_env: None) -> None:
    store = s3_server.store(f"s3://{s3_bucket}/exp")
    store.upload_dir(tree(tmp_path / "a"), "ckpt")
    calls: list[tuple[str, Any]] = []
    store.client.meta.events.register(
        "before-parameter-build.s3",
        lambda params, model, **_: calls.append((model.name, params.get("Key") or params.get("Delete"))))
    store.delete_prefix("ckpt")
    deletes = [(op, arg) for op, arg in calls if op.startswith("Delete")]
    assert deletes[0] == ("DeleteObject", f"exp/ckpt/{MANIFEST_NAME}")
    assert [op for op, _ in deletes[1:]] == ["DeleteObjects"]


@pytest.mark.s3
def test_s3_delete_removes_objects_by_their_listed_names(s3_server: Any, s3_bucket: str, tree: Tree,
                                                        tmp_path: Path, isolated_aws_env: None) -> None:
    # Other tools (consoles, `aws s3 cp`, sync jobs) write "folder" marker objects whose keys end in "/". On AWS,
    # deleted under a re-normalised name ("exp/ckpt/notes") the marker would stay and the checkpoint never be
    # gone. SeaweedFS forgives that (it deletes the folder either way), so the requests themselves are checked.
    store = s3_server.store(f"s3://{s3_bucket}/exp")
    store.upload_dir(tree(tmp_path / "a"), "ckpt")
    store.client.put_object(Bucket=s3_bucket, Key="exp/ckpt/notes/", Body=b"")
    listed = store.list_keys("ckpt")
    assert "ckpt/notes/" in listed
    sent: list[str] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name == "DeleteObject":
            sent.append(params["Key"])
        elif model.name == "DeleteObjects":
            sent.extend(o["Key"] for o in params["Delete"]["Objects"])

    store.client.meta.events.register("before-parameter-build.s3", record)
    store.delete_prefix("ckpt")
    assert sorted(sent) == sorted(f"exp/{key}" for key in listed)
    assert store.list_keys("ckpt") == []
    assert store.client.list_objects_v2(Bucket=s3_bucket, Prefix="exp/ckpt/").get("KeyCount", 0) == 0


@pytest.mark.s3
def test_s3_objects_that_delete_objects_refuses_are_an_error(s3_server: Any, s3_bucket: str,
                                                             isolated_aws_env: None) -> None:
    # DeleteObjects answers 200 and lists the keys it did not delete. SeaweedFS refuses a ".." key that way,
    # as AWS refuses keys the credentials may not delete; ignored, a checkpoint would survive its rotation.
    store = s3_server.store(f"s3://{s3_bucket}/exp")
    store.client.put_object(Bucket=s3_bucket, Key="exp/kept", Body=b"1")
    with pytest.raises(StorageError, match=r"1 of 2 objects were not deleted.*exp/\.\./x.*InvalidRequest"):
        store._delete(["../x", "kept"])  # the backend primitive: ObjectStore never builds such a key


# -- the filesystem backend and open_store -----------------------------------------------------------


def test_local_store_check(tmp_path: Path) -> None:
    missing = tmp_path / "mnt" / "ckpts"
    with pytest.raises(StorageError) as err:
        LocalStore(missing).check()
    assert str(missing) in str(err.value) and "s3_create_bucket: true" in str(err.value)
    assert not missing.exists()
    LocalStore(missing, create=True).check()
    assert missing.is_dir() and not list(missing.iterdir()), "the write probe cleans up after itself"
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="not a directory"):
        LocalStore(tmp_path / "file").check()


def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    s3 = open_store("s3://bucket/runs", sse="AES256", create_bucket=True)
    assert isinstance(s3, S3Store) and s3.uri == "s3://bucket/runs" and s3.sse == "AES256"
    for location in (f"file://{tmp_path}/runs", str(tmp_path / "runs"), f"file://localhost{tmp_path}/runs"):
        local = open_store(location, sse=None, sse_kms_key_id=None, create_bucket=True)
        assert isinstance(local, LocalStore) and local.root == tmp_path / "runs" and local.create
        assert local.uri == (tmp_path / "runs").as_uri()
    assert open_store(f"file://{tmp_path}/with%20space").root == tmp_path / "with space"
    for bad in ("runs/relative", "file://host/x", "file:relative", "gs://bucket/x", ""):
        with pytest.raises(ValueError):
            open_store(bad)
    with pytest.raises(ValueError, match="sse"):
        open_store(str(tmp_path), sse="AES256")


def test_store_locations_are_told_apart_cheaply() -> None:
    assert STORE_SCHEMES == ("s3://", "file://")
    assert is_store_uri("s3://bucket/runs/step_1") and is_store_uri("file:///mnt/nfs/step_1")
    assert not is_store_uri("/mnt/nfs/step_1") and not is_store_uri("outputs/step_1") and not is_store_uri("auto")
    for good in ("s3://bucket", "s3://bucket/runs/", "s3://bkt/p", "file:///mnt/nfs/ckpts", "file:///with%20space"):
        check_location(good)
    for bad in ("s3://", "s3:///runs", "file:///", "file://relative/x", "file://host/x", "file:relative",
                "file:///mnt?x=1", "/mnt/nfs/ckpts", "gs://bucket/x", "S3://bucket/x", "",
                "s3://My_Bucket/x", "s3://ab/x", "s3://bucket/x/../y", "s3://bucket/x//y"):
        with pytest.raises(ValueError) as err:
            check_location(bad)
        assert "\n" not in str(err.value) and repr(bad) in str(err.value)


def test_a_local_listing_that_fails_is_an_error_not_an_empty_store(tmp_path: Path, tree: Tree) -> None:
    store = LocalStore(tmp_path / "store", create=True)
    store.upload_dir(tree(tmp_path / "a"), "ckpts/step_1")
    # A symlink loop: every read of it fails (ELOOP), as EIO or ESTALE on a sick mount would. An empty answer
    # would make resume start fresh, and delete_prefix skip the manifest-first order.
    (tmp_path / "store" / "loop").symlink_to("loop")
    for read in (store.list_complete, store.list_keys, store.delete_prefix):
        with pytest.raises(StorageError, match="loop"):
            read("loop")
    # Only an absent prefix is empty.
    assert store.list_complete("absent") == [] and store.list_keys("absent") == []
    assert store.list_complete("ckpts") == ["step_1"]


def test_uploader_runs_then_after_a_successful_upload_only(tmp_path: Path, tree: Tree,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    store = LocalStore(tmp_path / "store", create=True)
    seen: list[tuple[list[str], list[str]]] = []
    with BackgroundUploader(store, max_attempts=1) as uploader:
        def then() -> None:  # the upload is complete, and still counted as pending
            seen.append((store.list_complete("ckpts"), uploader.pending()))

        uri = uploader.submit(tree(tmp_path / "a"), "ckpts/a", then=then)
        missing = uploader.submit(tmp_path / "vanished", "ckpts/b", then=then)
        uploader.submit(tree(tmp_path / "c"), "ckpts/c", then=lambda: 1 / 0)
        with pytest.raises(UploadError) as err:
            uploader.wait(timeout_s=30)
    assert err.value.missing == [missing]
    assert len(seen) == 1 and seen[0][0] == ["a"] and seen[0][1][0] == uri
    assert uploader.completed() == [uri, store.uri_for("ckpts/c")]
    assert store.list_complete("ckpts") == ["a", "c"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("ZeroDivisionError" in m and "ckpts/c" in m for m in errors)


def test_config_accepts_a_file_store_location() -> None:
    from configs import from_mapping as from_dict
    from qa.errors import ConfigError

    base = {"dataset_name": "squad", "do_eval": False}
    assert from_dict({**base, "s3_uri": "file:///mnt/nfs/ckpts"}, check_files=False).storage.s3_uri == "file:///mnt/nfs/ckpts"
    for bad in ("file://relative/x", "file:///", "/mnt/nfs/ckpts", "gs://b/x"):
        with pytest.raises(ConfigError, match="s3_uri"):
            from_dict({**base, "s3_uri": bad}, check_files=False)
    with pytest.raises(ConfigError, match="s3_sse"):
        from_dict({**base, "s3_uri": "file:///mnt/nfs", "s3_sse": "AES256"}, check_files=False)
