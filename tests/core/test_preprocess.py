"""Preprocessing: split, focal crop, auto-sized crop, default crop, flips, naming, captions, CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from core.cli import main
from core.errors import InvalidOptionError
from core.preprocess.crops import (
    AutocropObjective,
    AutocropSettings,
    auto_crop,
    auto_crop_size,
    should_split,
    split_count,
    split_oversized,
)
from core.preprocess.focal import FocalWeights, focal_crop
from core.preprocess.pipeline import PreprocessOptions, combine_caption, preprocess_folder, process_image


def rows_image(w: int, h: int) -> Image.Image:
    """Grey level = row index (mod 256): a crop's top row tells where it came from."""
    arr = np.repeat((np.arange(h) % 256).astype(np.uint8)[:, None], w, axis=1)
    return Image.fromarray(arr).convert("RGB")


@pytest.mark.parametrize(
    ("long_side", "tile", "overlap", "count"),
    [(1280, 512, 0.2, 3), (1024, 512, 0.2, 3), (1024, 512, 0.0, 2), (160, 64, 0.2, 3), (512, 512, 0.2, 1)],
)
def test_split_count_formula(long_side: int, tile: int, overlap: float, count: int) -> None:
    assert split_count(long_side, tile, overlap) == count
    assert count == max(1, math.ceil((long_side - tile * overlap) / (tile * (1 - overlap))))


def test_split_portrait_cuts_evenly_spaced_crops() -> None:
    crops = split_oversized(rows_image(64, 160), 64, 64, 0.2)
    assert [c.size for c in crops] == [(64, 64)] * 3
    assert [c.getpixel((10, 0))[0] for c in crops] == [0, 48, 96]  # type: ignore[index]


def test_split_landscape_swaps_axes() -> None:
    im = rows_image(64, 160).transpose(Image.Transpose.ROTATE_90)  # 160 wide, 64 tall
    crops = split_oversized(im, 64, 64, 0.2)
    assert len(crops) == 3 and all(c.size == (64, 64) for c in crops)
    assert should_split(160, 64, 64, 64, 0.5) and should_split(64, 160, 64, 64, 0.5)
    assert not should_split(64, 100, 64, 64, 0.5)  # ratio 0.64 is above the threshold
    assert not should_split(64, 64, 64, 64, 1.0)  # ratio 1 never splits


def noisy_right_end(w: int = 256, h: int = 64) -> Image.Image:
    """Flat grey with a high-entropy, corner-rich patch at the right end."""
    arr = np.full((h, w, 3), 128, dtype=np.uint8)
    arr[:, w - 64 :] = np.random.default_rng(0).integers(0, 256, (h, 64, 3), dtype=np.uint8)
    return Image.fromarray(arr)


@pytest.mark.parametrize(
    "weights", [FocalWeights(0.9, 1.0, 0.0), FocalWeights(0.9, 0.0, 1.0), FocalWeights()]
)
def test_focal_crop_moves_toward_the_busy_region(weights: FocalWeights) -> None:
    crop = focal_crop(noisy_right_end(), 64, 64, weights)
    arr = np.asarray(crop, dtype=np.float64)
    assert crop.size == (64, 64)
    assert arr.std() > 40  # it holds the noisy patch, not the flat grey
    assert (
        np.asarray(focal_crop(noisy_right_end().transpose(Image.Transpose.ROTATE_90), 64, 64, weights)).std()
        > 40
    )


def test_face_detector_plugs_in() -> None:
    def detector(image: Image.Image) -> list[tuple[float, float, float, float]]:
        return [(0.0, 10.0, 30.0, 30.0)]  # a "face" at the far left

    crop = focal_crop(noisy_right_end(), 64, 64, FocalWeights(face=1.0, entropy=0.0, edges=0.0), detector)
    assert np.asarray(crop, dtype=np.float64).std() < 1  # pulled to the flat left end
    ignored = focal_crop(noisy_right_end(), 64, 64, FocalWeights(face=1.0, entropy=0.0, edges=0.0))
    assert ignored.size == (64, 64)  # without a detector the face weight is ignored: centre crop


@settings(max_examples=60, deadline=None)
@given(
    w=st.integers(64, 4000),
    h=st.integers(64, 4000),
    objective=st.sampled_from(["maximize_area", "minimize_error"]),
)
def test_auto_crop_size_respects_bounds(w: int, h: int, objective: AutocropObjective) -> None:
    s = AutocropSettings(
        min_dim=384, max_dim=768, min_area=4096, max_area=409600, threshold=0.1, objective=objective
    )
    size = auto_crop_size(w, h, s)
    if size is None:
        return
    cw, ch = size
    assert cw % 64 == 0 and ch % 64 == 0
    assert 384 <= cw <= 768 and 384 <= ch <= 768
    assert 4096 <= cw * ch <= 409600
    r = (w / h) / (cw / ch)
    assert 1 - min(r, 1 / r) <= 0.1 + 1e-12


def test_auto_crop_objectives_and_no_fit() -> None:
    big = auto_crop_size(1000, 700, AutocropSettings(objective="maximize_area"))
    exact = auto_crop_size(1000, 700, AutocropSettings(objective="minimize_error"))
    assert big is not None and exact is not None
    err = lambda wh: 1 - min((1000 / 700) / (wh[0] / wh[1]), (wh[0] / wh[1]) / (1000 / 700))  # noqa: E731
    assert big[0] * big[1] >= exact[0] * exact[1] and err(exact) <= err(big)
    assert auto_crop_size(4000, 400, AutocropSettings()) is None  # 10:1 cannot be met within 384..768
    out = auto_crop(Image.new("RGB", (1000, 700)), AutocropSettings())
    assert out is not None and out.size == big
    with pytest.raises(InvalidOptionError):
        AutocropSettings(objective="bogus")  # type: ignore[arg-type]


def test_process_image_default_and_combinations() -> None:
    image = rows_image(64, 160)
    assert [c.size for c in process_image(image, PreprocessOptions(width=64, height=64))] == [(64, 64)]
    both = process_image(image, PreprocessOptions(width=64, height=64, split=True, focal_crop=True))
    assert len(both) == 4  # three split crops, then the focal crop, as A1111 does


@pytest.mark.parametrize(
    ("existing", "tags", "action", "tag_action", "expected"),
    [
        ("old", None, "ignore", None, ""),
        ("old", None, "copy", None, "old"),
        ("old", None, "prepend", None, "old"),
        (None, None, "copy", None, ""),
        ("old", ["t1", "t2"], "ignore", None, "t1, t2"),
        ("old", ["t1", "t2"], "copy", None, "old"),
        (None, ["t1", "t2"], "copy", None, "t1, t2"),
        ("old", ["t1", "t2"], "prepend", None, "old, t1, t2"),
        ("old", ["t1", "t2"], "append", None, "t1, t2, old"),
        ("old, t1", ["t1", "t2"], "prepend", None, "old, t1, t2"),
        ("old", ["t1"], "copy", "append", "old, t1"),
        ("old", ["t1"], "copy", "prepend", "t1, old"),
        ("old", ["t1"], "copy", "replace", "t1"),
        ("old", ["t1"], "ignore", "append", "t1"),
    ],
)
def test_combine_caption_table(
    existing: str | None, tags: list[str] | None, action: str, tag_action: str | None, expected: str
) -> None:
    assert combine_caption(existing, tags, action, tag_action) == expected  # type: ignore[arg-type]


def test_preprocess_folder_names_flips_captions_and_skips(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    wide = Image.new("RGBA", (128, 64), (200, 0, 0, 255))
    wide.paste((0, 0, 200, 0), (0, 0, 64, 64))  # left half blue and transparent
    wide.save(src / "a wide.png")
    (src / "a wide.txt").write_text("an existing caption", encoding="utf-8")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (120, 80), (0, 150, 0)).save(src / "b.jpg", exif=exif.tobytes())
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    (src / ".DS_Store").write_bytes(b"\x00")
    opts = PreprocessOptions(width=64, height=64, flip=True, caption_action="copy")
    result = preprocess_folder(src, dst, opts)
    names = sorted(p.name for p in dst.iterdir())
    assert names == [
        "00000-0-a wide.png",
        "00000-0-a wide.txt",
        "00000-1-a wide.png",
        "00000-1-a wide.txt",
        "00001-0-b.png",
        "00001-1-b.png",
    ]
    assert [(s.file, s.code) for s in result.skipped] == [("broken.png", "undecodable")]
    assert (dst / "00000-1-a wide.txt").read_text(encoding="utf-8") == "an existing caption"
    first, mirror = Image.open(dst / "00000-0-a wide.png"), Image.open(dst / "00000-1-a wide.png")
    assert first.mode == "RGBA" and first.size == (64, 64)  # alpha kept for use_weight
    assert np.array_equal(np.asarray(mirror), np.asarray(first)[:, ::-1])
    assert first.getpixel((0, 32))[3] == 0 and first.getpixel((63, 32))[3] == 255  # type: ignore[index]
    with pytest.raises(InvalidOptionError):
        preprocess_folder(src, src, opts)


def test_preprocess_cli(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    rows_image(64, 160).save(src / "tall.png")
    rc = main(
        [
            "preprocess",
            str(src),
            str(dst),
            "--width",
            "64",
            "--height",
            "64",
            "--split",
            "--overlap-ratio",
            "0.2",
            "--flip",
        ]
    )
    assert rc == 0
    assert sorted(p.name for p in dst.iterdir()) == [f"00000-{i}-tall.png" for i in range(6)]
    assert main(["preprocess", str(src), str(tmp_path / "x"), "--split-threshold", "2"]) == 2
