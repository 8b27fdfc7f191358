"""HTTP ``Range`` requests (RFC 9110 section 14): one byte range, as object stores serve them."""

from __future__ import annotations

import re
from dataclasses import dataclass

_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


class UnsatisfiableRangeError(ValueError):
    """The range lies wholly outside the object (answer 416 with ``Content-Range: bytes */size``)."""


@dataclass(frozen=True)
class ByteRange:
    """Inclusive ``start..end`` of an object of ``size`` bytes."""

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        """Bytes in the range."""
        return self.end - self.start + 1

    def content_range(self) -> str:
        """The ``Content-Range`` header value."""
        return f"bytes {self.start}-{self.end}/{self.size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The range a ``Range`` header asks of a ``size``-byte object; None means the whole object.

    Several ranges or a syntax this does not understand also give None (serving the whole object is
    the RFC's allowed answer); a range starting past the end raises ``UnsatisfiableRangeError``.
    """
    if not header:
        return None
    match = _RANGE_RE.match(header)
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix range: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise UnsatisfiableRangeError(header)
        return ByteRange(max(0, size - suffix), size - 1, size)
    start = int(first)
    end = size - 1 if not last else min(int(last), size - 1)
    if start >= size:
        raise UnsatisfiableRangeError(header)
    if end < start:
        return None
    return ByteRange(start, end, size)
