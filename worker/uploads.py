"""Artifact uploads under content-hash keys, retried with backoff, off the training thread.

A file is stored under ``tenants/<tenant>/jobs/<job>/artifacts/<sha256><suffix>``: the same bytes
always land on the same key, so a retried or repeated upload (a resumed job re-saving the same
checkpoint) overwrites nothing new and the artifact table's ``(job_id, kind, sha256)`` key keeps
one row. A failed upload is retried with exponential backoff and then given up with a warning;
it never raises into training.
"""

from __future__ import annotations

import logging
import mimetypes
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from api.storage.base import ObjectStore, tenant_key
from core.hashing import file_sha256

log = logging.getLogger(__name__)

_SUFFIX = re.compile(r"^(\.[A-Za-z0-9]{1,10}){1,2}$")
CONTENT_TYPES = {
    ".pt": "application/octet-stream",
    ".optim": "application/octet-stream",
    ".safetensors": "application/octet-stream",
    ".csv": "text/csv",
    ".png": "image/png",
    ".json": "application/json",
}


@dataclass(frozen=True)
class ArtifactFile:
    """A local file to publish as an artifact of ``kind`` (service-api.md's kinds)."""

    path: Path
    kind: str
    step: int | None = None
    name: str | None = None  # the name clients see (default: the file's name)


@dataclass(frozen=True)
class UploadedArtifact:
    """An uploaded file, ready to be recorded in the artifacts table."""

    kind: str
    name: str
    step: int | None
    bytes: int
    sha256: str
    content_type: str
    storage_key: str


def content_type_for(path: Path) -> str:
    """The content type artifacts of this file name are served with."""
    return (
        CONTENT_TYPES.get(path.suffix.lower())
        or mimetypes.guess_type(path.name)[0]
        or "application/octet-stream"
    )


def _suffix(name: str) -> str:
    suffixes = "".join(Path(name).suffixes[-2:])
    return suffixes if _SUFFIX.match(suffixes) else ""


def upload_artifact(store: ObjectStore, tenant_id: str, job_id: str, item: ArtifactFile) -> UploadedArtifact:
    """Upload one file under its content-hash key (skipped when that object already exists)."""
    name = item.name or item.path.name
    sha = file_sha256(item.path)
    size = item.path.stat().st_size
    key = tenant_key(tenant_id, "jobs", job_id, "artifacts", sha + _suffix(name))
    ctype = content_type_for(item.path)
    existing = store.head(key)
    if existing is None or existing.bytes != size:
        stored = store.put_file(key, item.path, content_type=ctype)
        if stored.sha256 and stored.sha256 != sha:
            raise OSError(f"{item.path.name} changed while it was uploaded")
    return UploadedArtifact(item.kind, name, item.step, size, sha, ctype, key)


def with_retries(
    action: Callable[[], UploadedArtifact],
    *,
    attempts: int = 6,
    first_delay: float = 0.5,
    max_delay: float = 30.0,
    stop: threading.Event | None = None,
) -> UploadedArtifact | None:
    """Run ``action`` until it succeeds, backing off exponentially; None after ``attempts`` failures."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except FileNotFoundError as exc:
            log.warning("artifact file vanished before upload: %s", exc)
            return None
        except Exception as exc:  # storage errors of any backend: retry, never raise into training
            if attempt == attempts:
                log.error("upload failed after %d attempts: %s", attempts, exc)
                return None
            log.warning("upload attempt %d failed (%s); retrying in %.1f s", attempt, exc, delay)
            if stop is not None and stop.wait(delay):
                return None
            if stop is None:
                time.sleep(delay)  # backoff between retries of a failed upload
            delay = min(delay * 2, max_delay)
    return None


class Uploader:
    """A background thread running upload tasks in order, off the training thread."""

    def __init__(self, store: ObjectStore, tenant_id: str, job_id: str, *, attempts: int = 6) -> None:
        self.store = store
        self.tenant_id = tenant_id
        self.job_id = job_id
        self.attempts = attempts
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._abort = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"uploader-{job_id}", daemon=True)
        self._thread.start()

    def submit(self, task: Callable[[], None]) -> None:
        """Queue a task for the upload thread (returns at once)."""
        self._queue.put(task)

    def upload(self, item: ArtifactFile, attempts: int | None = None) -> UploadedArtifact | None:
        """Upload an artifact file with retries; None when it could not be uploaded."""
        return with_retries(
            lambda: upload_artifact(self.store, self.tenant_id, self.job_id, item),
            attempts=attempts or self.attempts,
            stop=self._abort,
        )

    def put_file(self, key: str, path: Path, attempts: int | None = None) -> bool:
        """Store a file under a fixed key (worker state, not an artifact) with retries."""

        def action() -> UploadedArtifact:
            stored = self.store.put_file(key, path)
            return UploadedArtifact("", path.name, None, stored.bytes, stored.sha256, "", key)

        return with_retries(action, attempts=attempts or self.attempts, stop=self._abort) is not None

    def _run(self) -> None:
        while True:
            task = self._queue.get()
            try:
                if task is None:
                    return
                task()
            except Exception:
                log.exception("an upload task failed")  # never into training
            finally:
                self._queue.task_done()

    def drain(self, timeout: float) -> bool:
        """Wait until every queued task is done (or ``timeout``); True when drained."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)  # waiting for our own background thread to empty its queue
        return not self._queue.unfinished_tasks

    def close(self, abort: bool = False) -> None:
        """Stop the thread after the queue empties (``abort``: give up pending retries now)."""
        if abort:
            self._abort.set()
        self._queue.put(None)
        self._thread.join(timeout=60)
