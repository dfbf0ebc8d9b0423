"""Background uploads of finished checkpoints: one worker thread, retries with backoff and jitter, a deadline."""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qa.checkpoint.store import StorageError, Store, UploadError

logger = logging.getLogger(__name__)


class SupersededError(StorageError):
    """Work given up because a later upload of the same kind made it pointless (an older checkpoint whose last
    part never came, once a newer checkpoint waits behind it): logged, neither retried nor a failure."""


@dataclass
class _Job:
    local_dir: Path
    uri: str
    work: Callable[[], Any]  # one attempt; raises to be retried
    then: Callable[[], None] | None = None
    attempts: int = field(default=0)
    superseded: bool = field(default=False)


class BackgroundUploader:
    """Uploads directories on one worker thread, in submission order, retrying with backoff.

    Training never blocks and never crashes because of the store: failures are logged and retried with
    exponential backoff and full jitter until ``deadline_s`` after the first attempt (or
    ``max_attempts``), then recorded; :meth:`wait` reports what is missing.
    """

    def __init__(
        self,
        store: Store,
        *,
        deadline_s: float = 3600.0,
        max_attempts: int | None = None,
        base_delay_s: float = 1.0,
        max_delay_s: float = 60.0,
        superseded_wait_s: float = 30.0,
    ) -> None:
        self.store = store
        # How long work that waits on other nodes goes on waiting once later work is queued behind it.
        self.superseded_wait_s = superseded_wait_s
        self.deadline_s, self.max_attempts = deadline_s, max_attempts
        self.base_delay_s, self.max_delay_s = base_delay_s, max_delay_s  # retry back-off bounds
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._failed: list[str] = []
        self._done: list[str] = []
        self._closed = threading.Event()  # also interrupts backoff sleeps
        self._thread = threading.Thread(target=self._run, name="checkpoint-uploader", daemon=True)
        self._thread.start()

    def submit(self, local_dir: str | os.PathLike[str], key_prefix: str, metadata: Mapping[str, Any] | None = None,
               *, then: Callable[[], None] | None = None) -> str:
        """Queue ``local_dir`` for upload to ``key_prefix``; returns its URI at once.

        ``then`` runs on the worker thread after the upload succeeded (e.g. rotating old uploads away), while
        the job still counts as pending, so :meth:`wait` waits for it too; its errors are logged, not raised.
        """
        meta = dict(metadata) if metadata else None
        return self.submit_work(local_dir, self.store.uri_for(key_prefix),
                                lambda: self.store.upload_dir(local_dir, key_prefix, meta), then=then)

    def submit_work(self, local_dir: str | os.PathLike[str], uri: str, work: Callable[[], Any], *,
                    then: Callable[[], None] | None = None) -> str:
        """Queue ``work`` (one attempt at publishing ``local_dir`` as ``uri``), retried like an upload."""
        job = _Job(Path(local_dir), uri, work, then)
        with self._cond:
            if self._closed.is_set():
                raise StorageError("BackgroundUploader is closed")
            self._queue.append(job)
            self._cond.notify_all()
        logger.info("queued upload of %s to %s", job.local_dir, job.uri)
        return job.uri

    @property
    def stopping(self) -> threading.Event:
        """Set when the uploader closes: work that waits (for other nodes' parts) waits on it."""
        return self._closed

    def pending(self) -> list[str]:
        """URIs queued or in progress (the first one), oldest first."""
        with self._cond:
            return [j.uri for j in self._queue]

    def has_later_work(self) -> bool:
        """Whether anything is queued behind the upload in progress (for the work in progress to ask)."""
        with self._cond:
            return len(self._queue) > 1

    def failed(self) -> list[str]:
        """URIs whose upload was given up on."""
        with self._cond:
            return list(self._failed)

    def completed(self) -> list[str]:
        """URIs uploaded successfully, in order."""
        with self._cond:
            return list(self._done)

    def wait(self, timeout_s: float | None = None) -> None:
        """Block until every submitted upload finished; UploadError naming the missing ones otherwise."""
        with self._cond:
            self._cond.wait_for(lambda: not self._queue, timeout=timeout_s)
            missing = self._failed + [j.uri for j in self._queue]
        if missing:
            raise UploadError(f"{len(missing)} upload(s) did not reach the checkpoint store: {', '.join(missing)}", missing)

    def close(self, timeout_s: float | None = 30.0) -> None:
        """Stop the worker; queued uploads are abandoned (call :meth:`wait` first to flush)."""
        with self._cond:
            self._closed.set()
            self._cond.notify_all()
        self._thread.join(timeout_s)
        if self.pending():
            logger.warning("uploader closed with uploads not done: %s", ", ".join(self.pending()))

    def __enter__(self) -> BackgroundUploader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed.is_set())
                if self._closed.is_set():
                    return
                # The head stays queued while in progress, so pending()/wait() still count it.
                job = self._queue[0]
            ok = self._upload_with_retries(job)
            if ok and job.then is not None:
                self._after(job)
            with self._cond:
                self._queue.popleft()
                if not job.superseded:
                    (self._done if ok else self._failed).append(job.uri)
                self._cond.notify_all()

    def _after(self, job: _Job) -> None:
        try:
            job.then()  # type: ignore[misc]
        except Exception as e:  # noqa: BLE001 - the upload itself is done; training must go on
            error = str(e) if isinstance(e, StorageError) else self.store.redact(f"{type(e).__name__}: {e}")
            logger.error("after uploading %s: %s", job.uri, error)

    def _upload_with_retries(self, job: _Job) -> bool:
        started = time.monotonic()
        while not self._closed.is_set():
            job.attempts += 1
            try:
                job.work()
                return True
            except SupersededError as e:
                logger.warning("gave up on %s: %s", job.uri, e)
                job.superseded = True
                return False
            except Exception as e:  # never let a storage problem escape into training
                error = str(e) if isinstance(e, StorageError) else self.store.redact(f"{type(e).__name__}: {e}")
                if not job.local_dir.is_dir():
                    # Deleted locally (e.g. checkpoint rotation): retrying cannot help, and it would
                    # hold up every later upload until the deadline.
                    logger.error("giving up on upload to %s: local dir %s is gone", job.uri, job.local_dir)
                    return False
                delay = random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2 ** min(job.attempts - 1, 30)))
                out_of_attempts = self.max_attempts is not None and job.attempts >= self.max_attempts
                if out_of_attempts or time.monotonic() + delay - started > self.deadline_s:
                    logger.error("giving up on upload to %s after %d attempts: %s", job.uri, job.attempts, error)
                    return False
                logger.warning(
                    "upload to %s failed (attempt %d), retrying in %.1fs: %s", job.uri, job.attempts, delay, error
                )
                self._closed.wait(delay)
        return False
