"""Checkpoint hashes: see ``core.hashing`` (torch-free, so the API computes the same ones)."""

from core.hashing import SHORT_HASH_LEN, file_sha256, folder_sha256, short_hash

__all__ = ["SHORT_HASH_LEN", "file_sha256", "folder_sha256", "short_hash"]
