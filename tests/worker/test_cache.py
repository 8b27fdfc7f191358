"""The worker's disk cache: fetched once, LRU eviction beyond the cap, entries in use never evicted."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from core.errors import HyperforgeError
from worker.cache import DiskCache


def _key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _writer(size: int, calls: list[str], name: str):
    def fetch(into: Path) -> None:
        calls.append(name)
        (into / "blob").write_bytes(b"x" * size)

    return fetch


def _age(cache: DiskCache, key: str, seconds_ago: float) -> None:
    marker = cache.root / key / ".complete"
    t = time.time() - seconds_ago
    os.utime(marker, (t, t))


def test_fetches_once_and_reuses(tmp_path: Path) -> None:
    """A second use of the same key reads the cached folder without fetching again."""
    cache = DiskCache(tmp_path, max_bytes=10_000)
    calls: list[str] = []
    with cache.use(_key("a"), _writer(100, calls, "a")) as folder:
        assert (folder / "blob").stat().st_size == 100
    with cache.use(_key("a"), _writer(100, calls, "a")) as folder:
        assert (folder / "blob").exists()
    assert calls == ["a"]


def test_evicts_least_recently_used_beyond_the_cap(tmp_path: Path) -> None:
    """Past the cap the oldest entries go first; the newest one stays."""
    cache = DiskCache(tmp_path, max_bytes=250)
    calls: list[str] = []
    for name, age in (("a", 30), ("b", 20)):
        with cache.use(_key(name), _writer(100, calls, name)):
            pass
        _age(cache, _key(name), age)
    with cache.use(_key("c"), _writer(100, calls, "c")):
        pass
    kept = {e.key for e in cache.entries()}
    assert kept == {_key("b"), _key("c")}
    assert cache.total_bytes() <= 250


def test_an_entry_in_use_is_never_evicted(tmp_path: Path) -> None:
    """An entry held by a running job survives eviction even when it is the oldest."""
    cache = DiskCache(tmp_path, max_bytes=150)
    calls: list[str] = []
    with cache.use(_key("held"), _writer(100, calls, "held")) as held:
        _age(cache, _key("held"), 60)
        with cache.use(_key("new"), _writer(100, calls, "new")):
            pass
        assert (held / "blob").exists()
    assert _key("held") in {e.key for e in cache.entries()}


def test_a_failed_fetch_leaves_nothing(tmp_path: Path) -> None:
    """A fetch that raises leaves no entry, so the next use fetches again."""
    cache = DiskCache(tmp_path, max_bytes=1000)

    def broken(into: Path) -> None:
        (into / "partial").write_bytes(b"half")
        raise OSError("connection reset")

    with pytest.raises(OSError), cache.use(_key("x"), broken):
        pass
    assert cache.entries() == []
    calls: list[str] = []
    with cache.use(_key("x"), _writer(10, calls, "x")):
        pass
    assert calls == ["x"]


def test_keys_must_be_sha256(tmp_path: Path) -> None:
    """A key that is not a sha256 digest (a path, say) is refused."""
    cache = DiskCache(tmp_path, max_bytes=1000)
    with pytest.raises(HyperforgeError), cache.use("../etc", _writer(1, [], "bad")):
        pass
