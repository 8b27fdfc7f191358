"""Artifact uploads: content-hash keys (a repeated upload adds nothing) and retries that never raise."""

from __future__ import annotations

from pathlib import Path

from api.storage import FilesystemObjectStore
from worker.uploads import ArtifactFile, UploadedArtifact, upload_artifact, with_retries

TENANT = "ten_" + "0" * 26


def test_same_bytes_same_key_and_a_single_object(tmp_path: Path) -> None:
    """Uploading the same file twice (a retried upload) lands on one content-addressed key."""
    store = FilesystemObjectStore(tmp_path / "objects")
    file = tmp_path / "inkwash-10.pt"
    file.write_bytes(b"weights" * 100)
    first = upload_artifact(store, TENANT, "job_x", ArtifactFile(file, "checkpoint", 10))
    second = upload_artifact(store, TENANT, "job_x", ArtifactFile(file, "checkpoint", 10))
    assert first == second
    assert first.storage_key.endswith(first.sha256 + ".pt") and first.name == "inkwash-10.pt"
    assert list(store.list_keys(f"tenants/{TENANT}/jobs/job_x/")) == [first.storage_key]
    file.write_bytes(b"other weights")
    third = upload_artifact(store, TENANT, "job_x", ArtifactFile(file, "checkpoint", 10))
    assert third.storage_key != first.storage_key


def test_retries_until_the_store_answers(tmp_path: Path) -> None:
    """Two failures, then success: the result comes back."""
    failures = iter([OSError("reset"), OSError("timeout")])

    def flaky() -> UploadedArtifact:
        error = next(failures, None)
        if error is not None:
            raise error
        return UploadedArtifact("checkpoint", "a.pt", 1, 3, "f" * 64, "application/octet-stream", "k")

    result = with_retries(flaky, attempts=5, first_delay=0.01)
    assert result is not None and result.name == "a.pt"


def test_gives_up_without_raising(tmp_path: Path) -> None:
    """A store that never answers makes the upload return None after its attempts, not raise."""
    calls: list[int] = []

    def down() -> UploadedArtifact:
        calls.append(1)
        raise ConnectionError("store unreachable")

    assert with_retries(down, attempts=3, first_delay=0.01) is None
    assert len(calls) == 3
