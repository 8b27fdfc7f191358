"""Geometric crops of A1111's Preprocess tab: cover-resize, split oversized, auto-sized crop."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from PIL import Image

from core.data.buckets import cover_crop_box
from core.errors import InvalidOptionError

AutocropObjective = Literal["maximize_area", "minimize_error"]


def cover_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover ``width`` x ``height`` and centre-crop (A1111's "crop and resize")."""
    box = cover_crop_box(image.width, image.height, width, height)
    return image.resize((width, height), Image.Resampling.LANCZOS, box=box)


def split_ratio(img_w: int, img_h: int, width: int, height: int) -> tuple[float, bool]:
    """A1111's aspect mismatch ratio (<= 1 when the image is longer than the target) and whether x/y swap."""
    if img_h > img_w:
        return (img_w * height) / (img_h * width), False
    return (img_h * width) / (img_w * height), True


def should_split(img_w: int, img_h: int, width: int, height: int, threshold: float) -> bool:
    """Whether an image is oversized enough to be split: ratio < 1 and ratio <= threshold."""
    ratio, _ = split_ratio(img_w, img_h, width, height)
    return ratio < 1.0 and ratio <= threshold


def split_count(long_side: int, tile: int, overlap: float) -> int:
    """Number of crops along the long side: ceil((L - T*overlap) / (T*(1-overlap)))."""
    return max(1, math.ceil((long_side - tile * overlap) / (tile * (1.0 - overlap))))


def split_oversized(image: Image.Image, width: int, height: int, overlap: float) -> list[Image.Image]:
    """Scale the short side to the target and cut evenly spaced, overlapping crops along the long side."""
    if not 0.0 <= overlap < 1.0:
        raise InvalidOptionError(f"must be within [0, 1), got {overlap}", option="overlap_ratio")
    _, inverse_xy = split_ratio(image.width, image.height, width, height)
    # Work in "portrait" coordinates: to_w across the short side, crops stacked along the long one.
    from_w, from_h = (image.height, image.width) if inverse_xy else (image.width, image.height)
    to_w, to_h = (height, width) if inverse_xy else (width, height)
    long_side = from_h * to_w // from_w
    scaled = image.resize((long_side, to_w) if inverse_xy else (to_w, long_side), Image.Resampling.LANCZOS)
    count = split_count(long_side, to_h, overlap)
    step = (long_side - to_h) / (count - 1) if count > 1 else 0.0
    first = 0 if count > 1 else max(0, (long_side - to_h) // 2)
    crops = []
    for i in range(count):
        y = first + int(step * i)
        box = (y, 0, y + to_h, to_w) if inverse_xy else (0, y, to_w, y + to_h)
        crops.append(scaled.crop(box))
    return crops


@dataclass(frozen=True)
class AutocropSettings:
    """Bounds of A1111's auto-sized crop: sides in steps of 64, an area range and an aspect error cap."""

    min_dim: int = 384
    max_dim: int = 768
    min_area: int = 64 * 64
    max_area: int = 640 * 640
    threshold: float = 0.1
    objective: AutocropObjective = "maximize_area"

    def __post_init__(self) -> None:
        if self.objective not in ("maximize_area", "minimize_error"):
            raise InvalidOptionError(f"unknown objective {self.objective!r}", option="autocrop_objective")
        if not 0 < self.min_dim <= self.max_dim:
            raise InvalidOptionError(f"{self.min_dim}..{self.max_dim} is not a range", option="autocrop_min")
        if not 0 < self.min_area <= self.max_area:
            raise InvalidOptionError(
                f"{self.min_area}..{self.max_area} is not a range", option="autocrop_area_min"
            )


def auto_crop_size(img_w: int, img_h: int, settings: AutocropSettings) -> tuple[int, int] | None:
    """The best (w, h) in steps of 64 within the bounds whose aspect error is <= threshold, or None."""
    aspect = img_w / img_h

    def error(w: int, h: int) -> float:
        """1 - (the smaller over the larger of the two aspect ratios)."""
        r = aspect / (w / h)
        return 1.0 - (r if r < 1 else 1 / r)

    s = settings
    candidates = [
        (w, h)
        for w in range(s.min_dim, s.max_dim + 1, 64)
        for h in range(s.min_dim, s.max_dim + 1, 64)
        if s.min_area <= w * h <= s.max_area and error(w, h) <= s.threshold
    ]
    if not candidates:
        return None
    if s.objective == "maximize_area":
        return max(candidates, key=lambda wh: (wh[0] * wh[1], -error(*wh)))
    return max(candidates, key=lambda wh: (-error(*wh), wh[0] * wh[1]))


def auto_crop(image: Image.Image, settings: AutocropSettings) -> Image.Image | None:
    """Scale-to-cover and centre-crop to the size ``auto_crop_size`` picks, or None when none fits."""
    size = auto_crop_size(image.width, image.height, settings)
    return cover_resize(image, *size) if size else None
