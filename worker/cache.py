"""A local disk cache of datasets and base models, keyed by sha256, least-recently-used with a size cap.

A worker trains for hours on one dataset and one base model; both are fetched from storage once per
host and kept under ``root/<sha256>/``. Entries are shared between worker processes on one host:
each entry has a lock file; a job holds a shared lock on its entries while it trains, fetching takes
the exclusive lock, and eviction only removes entries it can lock exclusively without waiting, so an
entry in use is never deleted under a running job. Recency is the mtime of ``.complete``, touched on
every use.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from core.errors import HyperforgeError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMPLETE = ".complete"


@dataclass(frozen=True)
class CacheEntry:
    """One cached item: its key, the folder holding it, its size and when it was last used."""

    key: str
    path: Path
    bytes: int
    last_used: float


def _tree_bytes(path: Path) -> int:
    """Bytes of every regular file under ``path`` (symlinks are not followed)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


class DiskCache:
    """Content-addressed folders under ``root``, evicted least-recently-used beyond ``max_bytes``."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.root.mkdir(parents=True, exist_ok=True)

    def _check_key(self, key: str) -> str:
        # Keys become folder names: only a lowercase sha256 is accepted, never a user-supplied path.
        if not _SHA256.match(key):
            raise HyperforgeError(f"cache keys are sha256 hex digests, got {key!r}", code="invalid_cache_key")
        return key

    def _lock_path(self, key: str) -> Path:
        return self.root / f"{key}.lock"

    @contextlib.contextmanager
    def use(self, key: str, fetch: Callable[[Path], None]) -> Iterator[Path]:
        """Yield the folder of ``key``, calling ``fetch(folder)`` first when it is not cached yet.

        The entry is protected from eviction until the ``with`` block ends. ``fetch`` writes the
        item's files into the (empty) folder it is given; a fetch that raises leaves nothing behind.
        """
        key = self._check_key(key)
        entry = self.root / key
        with open(self._lock_path(key), "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not (entry / _COMPLETE).exists():
                    self._fetch_into(entry, fetch)
                (entry / _COMPLETE).touch()
            finally:
                # Downgrade to shared: other jobs may use the entry too, eviction may not.
                fcntl.flock(lock, fcntl.LOCK_SH)
            self.evict(keep=key)
            yield entry

    def _fetch_into(self, entry: Path, fetch: Callable[[Path], None]) -> None:
        staging = self.root / f".{entry.name}.{os.getpid()}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(entry, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            fetch(staging)
            (staging / _COMPLETE).touch()
            staging.rename(entry)  # atomic on one filesystem: readers see all or nothing
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def entries(self) -> list[CacheEntry]:
        """Every complete entry, least recently used first."""
        found = []
        for child in self.root.iterdir():
            marker = child / _COMPLETE
            if _SHA256.match(child.name) and marker.exists():
                with contextlib.suppress(FileNotFoundError):
                    found.append(CacheEntry(child.name, child, _tree_bytes(child), marker.stat().st_mtime))
        return sorted(found, key=lambda e: e.last_used)

    def total_bytes(self) -> int:
        """Bytes held by complete entries."""
        return sum(e.bytes for e in self.entries())

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least-recently-used entries not in use until the cache fits ``max_bytes``."""
        entries = self.entries()
        total = sum(e.bytes for e in entries)
        removed: list[str] = []
        for e in entries:
            if total <= self.max_bytes:
                break
            if e.key == keep:
                continue
            with open(self._lock_path(e.key), "a+b") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a job is using it
                # Rename first so a concurrent reader never sees a half-deleted folder as complete.
                doomed = self.root / f".{e.key}.{os.getpid()}.{time.monotonic_ns()}.evicted"
                with contextlib.suppress(FileNotFoundError):
                    e.path.rename(doomed)
                    shutil.rmtree(doomed, ignore_errors=True)
                    total -= e.bytes
                    removed.append(e.key)
        return removed
