"""A small synthetic dataset with a distinct, learnable style ("hatchwork"); torch-free.

Content varies (one or two shapes, six colours, four shapes, random places and
sizes) while the style is constant: warm paper with grain, a muted ink palette,
dark outlines, diagonal hatching and a vignette. Captions describe the content
and name the style, e.g. ``"a red circle and a blue square, hatchwork style"``.
The same seed always gives the same images; another seed gives a held-out set
of the same style.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import numpy as np
from PIL import Image, ImageDraw

from core.errors import InvalidOptionError

STYLE_NAME: Final = "hatchwork"
PALETTE: Final = {
    "red": (178, 60, 48),
    "blue": (46, 84, 132),
    "green": (74, 122, 70),
    "yellow": (222, 172, 62),
    "purple": (112, 72, 122),
    "black": (40, 36, 34),
}
SHAPES: Final = ("circle", "square", "triangle", "diamond")
_PAPER: Final = np.array([238.0, 228.0, 206.0])
_INK: Final = (44, 34, 30)
_SUPERSAMPLE: Final = 4


def make_demo_images(count: int = 24, seed: int = 0, size: int = 64) -> list[tuple[Image.Image, str]]:
    """``count`` (image, caption) pairs of the demo style, deterministic for ``seed``."""
    if count < 1:
        raise InvalidOptionError(f"must be at least 1, got {count}", option="count")
    if size < 16 or size % 8:
        raise InvalidOptionError(f"must be a multiple of 8 and at least 16, got {size}", option="size")
    rng = np.random.default_rng(seed)
    return [_make_one(rng, size) for _ in range(count)]


def write_demo_dataset(directory: str | Path, count: int = 24, seed: int = 0, size: int = 64) -> list[Path]:
    """Write ``0000.png`` + ``0000.txt`` ... into ``directory``; returns the image paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (image, caption) in enumerate(make_demo_images(count, seed, size)):
        path = out / f"{i:04d}.png"
        image.save(path, format="PNG")
        path.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def _make_one(rng: np.random.Generator, size: int) -> tuple[Image.Image, str]:
    """Draw one image and its caption."""
    big = size * _SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), tuple(int(c) for c in _PAPER))
    mask = Image.new("L", (big, big), 0)  # where shapes are: they get the heavier hatching
    draw, mdraw = ImageDraw.Draw(canvas), ImageDraw.Draw(mask)
    colours = list(PALETTE)
    picked = []
    for _ in range(int(rng.integers(1, 3))):
        colour = colours[int(rng.integers(len(colours)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        r = float(rng.uniform(0.14, 0.28)) * big
        cx, cy = (float(v) for v in rng.uniform(r, big - r, size=2))
        points = _outline(shape, cx, cy, r)
        width = max(1, big // 32)
        if shape == "circle":
            draw.ellipse(points, fill=PALETTE[colour], outline=_INK, width=width)
            mdraw.ellipse(points, fill=255)
        else:
            draw.polygon(points, fill=PALETTE[colour], outline=_INK, width=width)
            mdraw.polygon(points, fill=255)
        picked.append(f"a {colour} {shape}")
    small = np.asarray(canvas.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float64)
    inside = np.asarray(mask.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float64) / 255.0
    styled = _stylise(small, inside, rng)
    caption = f"{' and '.join(picked)}, {STYLE_NAME} style"
    return Image.fromarray(styled), caption


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Bounding box (circle) or polygon points of a shape centred at (cx, cy) with radius r."""
    if shape == "circle":
        return [(cx - r, cy - r), (cx + r, cy + r)]
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)]
    return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]


def _stylise(rgb: np.ndarray, inside: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply the constant style to (H, W, 3) floats: grain, hatching, warm tint, vignette."""
    h, w = inside.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    # Diagonal hatching, period 4 px: strong over shapes, faint over paper.
    stripe = (((xx + yy) % 4) < 1.5).astype(np.float64)
    hatch = 1.0 - stripe * (0.08 + 0.30 * inside)
    grain = 1.0 + rng.normal(0.0, 0.025, size=(h, w))
    # Vignette: darker towards the corners, by 40% at the very corner.
    r2 = ((xx - (w - 1) / 2) / (w / 2)) ** 2 + ((yy - (h - 1) / 2) / (h / 2)) ** 2
    vignette = 1.0 - 0.2 * r2
    out = rgb * (hatch * grain * vignette)[..., None]
    out = out * np.array([1.04, 1.0, 0.9])  # the warm sepia cast every image shares
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
