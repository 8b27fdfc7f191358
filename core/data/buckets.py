"""Aspect-ratio buckets: the better ``varsize``; torch-free.

Each bucket is a (width, height) in multiples of ``step`` (64) with both sides in
[min_side, max_side] and an area no larger than the training area
``width * height``. For every width we keep the tallest height that fits, and
the mirror image, so the set spans the aspect ratios evenly. Each image goes to
the bucket whose aspect ratio is nearest in log space (so 2:1 and 1:2 are equally
far from 1:1), then is scaled to cover it and centre-cropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from core.errors import InvalidOptionError

BUCKET_STEP: Final = 64


@dataclass(frozen=True, order=True)
class Bucket:
    """A training resolution: width x height in pixels."""

    width: int
    height: int

    @property
    def area(self) -> int:
        """Pixels in the bucket."""
        return self.width * self.height

    @property
    def log_aspect(self) -> float:
        """log(width / height), the distance measure between aspect ratios."""
        return math.log(self.width / self.height)


def default_side_bounds(width: int, height: int, step: int = BUCKET_STEP) -> tuple[int, int]:
    """Half the short side and twice the long side of the target in ``step`` multiples (512 -> 256..1024)."""
    lo = max(step, (min(width, height) // 2) // step * step)
    hi = max(lo, (max(width, height) * 2) // step * step)
    return lo, hi


def make_buckets(
    width: int,
    height: int,
    *,
    min_side: int | None = None,
    max_side: int | None = None,
    step: int = BUCKET_STEP,
) -> tuple[Bucket, ...]:
    """All buckets for a training size ``width`` x ``height`` (the area cap), sorted by aspect ratio."""
    if width <= 0 or height <= 0 or width % 8 or height % 8:
        raise InvalidOptionError(f"{width}x{height}: sides must be positive multiples of 8", option="width")
    d_lo, d_hi = default_side_bounds(width, height, step)
    lo = d_lo if min_side is None else min_side
    hi = d_hi if max_side is None else max_side
    if lo % step or hi % step or lo <= 0 or lo > hi:
        raise InvalidOptionError(
            f"bucket side bounds {lo}..{hi} must be positive multiples of {step}", option="bucket_min_side"
        )
    max_area = width * height
    if lo * lo > max_area:
        raise InvalidOptionError(
            f"no {lo}x{lo} bucket fits in {width}x{height}: lower the minimum side", option="bucket_min_side"
        )
    found: set[Bucket] = set()
    for w in range(lo, hi + 1, step):
        h = min(hi, max_area // w // step * step)
        if h >= lo:
            found.add(Bucket(w, h))
            found.add(Bucket(h, w))
    return tuple(sorted(found, key=lambda b: (b.log_aspect, b.area)))


def nearest_bucket(width: int, height: int, buckets: tuple[Bucket, ...]) -> Bucket:
    """The bucket with the aspect ratio nearest (in log space) to ``width / height``; ties: larger area."""
    if not buckets:
        raise InvalidOptionError("no buckets to choose from", option="varsize")
    target = math.log(width / height)
    return min(buckets, key=lambda b: (abs(b.log_aspect - target), -b.area, b.width))


def assign_buckets(sizes: list[tuple[int, int]], buckets: tuple[Bucket, ...]) -> list[Bucket]:
    """The bucket of each (width, height) in ``sizes``."""
    return [nearest_bucket(w, h, buckets) for w, h in sizes]


def cover_crop_box(src_w: int, src_h: int, dst_w: int, dst_h: int) -> tuple[float, float, float, float]:
    """The centred source box (left, top, right, bottom) with the aspect of ``dst``: scale-to-cover + crop."""
    if src_w * dst_h > dst_w * src_h:  # source is wider: crop the sides
        crop_w = src_h * dst_w / dst_h
        left = (src_w - crop_w) / 2
        return left, 0.0, left + crop_w, float(src_h)
    crop_h = src_w * dst_h / dst_w
    top = (src_h - crop_h) / 2
    return 0.0, top, float(src_w), top + crop_h
