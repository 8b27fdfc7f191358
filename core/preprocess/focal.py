"""Focal-point crop (A1111's autocrop) in numpy: entropy, edges (corners) and, when given, faces.

Each kind of point of interest gives a centroid; the focus is the weighted average
of the centroids that exist (weights renormalised over the kinds that found
points), and the crop is centred on it, clamped inside the image. No face model
can be had offline, so faces count only when a ``FaceDetector`` is passed: any
callable returning (x, y, w, h) boxes plugs in here; without one the face weight
is ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image

FaceDetector = Callable[[Image.Image], Sequence[tuple[float, float, float, float]]]

_WORK_SIDE: Final = 256  # analysis runs on a copy at most this long: fast, and enough for a centroid
_BINS: Final = 32


@dataclass(frozen=True)
class FocalWeights:
    """Relative pull of faces, high-entropy regions and edges (A1111 defaults 0.9, 0.15, 0.5)."""

    face: float = 0.9
    entropy: float = 0.15
    edges: float = 0.5


@dataclass(frozen=True)
class Point:
    """A point in pixel coordinates."""

    x: float
    y: float


def focal_crop(
    image: Image.Image,
    width: int,
    height: int,
    weights: FocalWeights | None = None,
    face_detector: FaceDetector | None = None,
) -> Image.Image:
    """Scale to cover ``width`` x ``height`` and crop around the focal point."""
    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    scaled = image.resize(size, Image.Resampling.LANCZOS)
    focus = focal_point(scaled, width, height, weights or FocalWeights(), face_detector)
    left = int(min(max(focus.x - width / 2, 0), scaled.width - width))
    top = int(min(max(focus.y - height / 2, 0), scaled.height - height))
    return scaled.crop((left, top, left + width, top + height))


def focal_point(
    image: Image.Image,
    crop_w: int,
    crop_h: int,
    weights: FocalWeights,
    face_detector: FaceDetector | None = None,
) -> Point:
    """The weighted centre of the points of interest (the image centre when none are found)."""
    k = min(1.0, _WORK_SIDE / max(image.width, image.height))
    work = image.convert("L").resize(
        (max(1, round(image.width * k)), max(1, round(image.height * k))), Image.Resampling.BOX
    )
    gray = np.asarray(work, dtype=np.float64)  # (h, w) in 0..255
    groups: list[tuple[float, list[Point]]] = []
    if weights.edges > 0:
        groups.append((weights.edges, [_unscale(p, k) for p in edge_points(gray)]))
    if weights.entropy > 0:
        found = entropy_point(gray, max(1, round(crop_w * k)), max(1, round(crop_h * k)))
        groups.append((weights.entropy, [_unscale(found, k)] if found else []))
    if weights.face > 0 and face_detector is not None:
        groups.append((weights.face, face_points(image, face_detector)))
    present = [(w, pts) for w, pts in groups if pts]
    total = sum(w for w, _ in present)
    if total <= 0:
        return Point(image.width / 2, image.height / 2)
    x = sum(w * _centroid(pts).x for w, pts in present) / total
    y = sum(w * _centroid(pts).y for w, pts in present) / total
    return Point(x, y)


def face_points(image: Image.Image, detector: FaceDetector) -> list[Point]:
    """One point per detected face: centred across, a third down from the top (eyes, not chin)."""
    return [Point(x + w * 0.5, y + h * 0.33) for x, y, w, h in detector(image)]


def entropy_point(gray: np.ndarray, win_w: int, win_h: int) -> Point | None:
    """Centre of the crop window with the highest grey-level entropy, sliding along the long axis."""
    h, w = gray.shape
    if w > win_w:
        axis, span, win = 1, w, win_w
    elif h > win_h:
        axis, span, win = 0, h, win_h
    else:
        return None  # the crop covers the whole image: entropy says nothing about where
    q = np.minimum((gray * _BINS / 256.0).astype(np.int64), _BINS - 1)
    # counts[b, i]: pixels of bin b in column (or row) i; cumulative sums give every window at once.
    counts = np.stack([(q == b).sum(axis=1 - axis) for b in range(_BINS)])  # (BINS, span)
    cum = np.concatenate([np.zeros((_BINS, 1)), np.cumsum(counts, axis=1)], axis=1)
    windows = cum[:, win:] - cum[:, : span - win + 1]  # (BINS, positions)
    p = windows / windows.sum(axis=0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=0)
    best = int(np.argmax(entropy))  # the first of equal maxima, like A1111's strict ">"
    if axis == 1:
        return Point(best + win / 2, h / 2)
    return Point(w / 2, best + win / 2)


def edge_points(
    gray: np.ndarray, max_points: int = 100, quality: float = 0.04, min_distance: float = 0.06
) -> list[Point]:
    """Strong corners (Shi-Tomasi minimum eigenvalue), at least ``min_distance`` * short side apart."""
    g = gray.astype(np.float64).copy()
    h, w = g.shape
    if h < 3 or w < 3:
        return []
    g[int(h * 0.9) :, :] = 153.0  # A1111's guard: ignore the bottom tenth, where watermarks sit
    gy, gx = (np.asarray(d) for d in np.gradient(g))
    sxx, syy, sxy = _box3(gx * gx), _box3(gy * gy), _box3(gx * gy)
    # Smaller eigenvalue of the 2x2 structure tensor: large only where edges cross (corners).
    lam = (sxx + syy) / 2 - np.sqrt(((sxx - syy) / 2) ** 2 + sxy**2)
    top = lam.max()
    if top <= 0:
        return []
    padded = np.pad(lam, 1, constant_values=-np.inf)
    neighbours = np.max([padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], axis=0)
    ys, xs = np.nonzero((lam >= quality * top) & (lam >= neighbours))
    order = np.argsort(-lam[ys, xs], kind="stable")
    min_d2 = (min_distance * min(h, w)) ** 2
    chosen: list[Point] = []
    for i in order:
        x, y = float(xs[i]), float(ys[i])
        if all((x - p.x) ** 2 + (y - p.y) ** 2 >= min_d2 for p in chosen):
            chosen.append(Point(x, y))
            if len(chosen) >= max_points:
                break
    return chosen


def _box3(a: np.ndarray) -> np.ndarray:
    """3x3 box sum with edge padding."""
    p = np.pad(a, 1, mode="edge")
    h, w = a.shape
    return np.sum([p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], axis=0)


def _centroid(points: list[Point]) -> Point:
    """Mean of the points."""
    return Point(sum(p.x for p in points) / len(points), sum(p.y for p in points) / len(points))


def _unscale(p: Point, k: float) -> Point:
    """Map a point from the analysis copy back to the image (pixel centres)."""
    return Point((p.x + 0.5) / k - 0.5, (p.y + 0.5) / k - 0.5)
