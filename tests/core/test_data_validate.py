"""Decoding by content, every mode conversion and rejection code, folder and zip scanning."""

from __future__ import annotations

import io
import struct
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core.data.decode import REJECTION_CODES, decode_image, to_rgb_and_alpha
from core.data.validate import scan_folder, scan_path, scan_zip
from core.errors import DatasetError


def encode(im: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def rgb(w: int = 64, h: int = 64, colour: tuple[int, int, int] = (200, 30, 30)) -> Image.Image:
    return Image.new("RGB", (w, h), colour)


def png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width x height: costs nothing to build, would cost GBs to decode."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# --- conversions ---------------------------------------------------------------------------


def test_formats_accepted_by_content_not_extension() -> None:
    for fmt in ("PNG", "JPEG", "WEBP", "BMP"):
        decoded = decode_image(encode(rgb(), fmt))
        assert decoded.info.format == fmt
        assert decoded.rgb.mode == "RGB" and decoded.rgb.size == (64, 64)
        assert decoded.alpha is None
        assert decoded.info.sha256 and decoded.info.bytes > 0


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (64, 64), (0, 255, 255, 0))  # pure red in CMYK
    decoded = decode_image(encode(cmyk, "JPEG", quality=95))
    assert decoded.info.mode == "CMYK"
    r, g, b = decoded.rgb.getpixel((32, 32))  # type: ignore[misc]
    assert r > 220 and g < 40 and b < 40


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    arr = np.full((64, 64), 32896, dtype=np.uint16)  # 128 * 257: mid grey in 16 bits
    arr[:, :8] = 65535
    im = Image.fromarray(arr)
    assert im.mode.startswith("I;16")
    decoded = decode_image(encode(im))
    assert decoded.info.mode.startswith("I;16")
    assert decoded.rgb.getpixel((32, 32)) == (128, 128, 128)  # PIL's plain convert would give 255
    assert decoded.rgb.getpixel((0, 0)) == (255, 255, 255)


def test_mode_i_is_read_as_sixteen_bit() -> None:
    im = Image.fromarray(np.full((64, 64), 257 * 10, dtype=np.int32), mode="I")
    out, alpha = to_rgb_and_alpha(im)
    assert out.getpixel((0, 0)) == (10, 10, 10) and alpha is None


def test_palette_with_transparency_gives_alpha() -> None:
    im = Image.new("P", (64, 64), 1)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    for x in range(32):
        for y in range(64):
            im.putpixel((x, y), 0)
    decoded = decode_image(encode(im, transparency=0))
    assert decoded.info.has_alpha and decoded.alpha is not None
    assert decoded.alpha.getpixel((0, 0)) == 0 and decoded.alpha.getpixel((63, 0)) == 255
    assert decoded.rgb.getpixel((63, 0)) == (255, 0, 0)


def test_la_keeps_alpha_and_grey() -> None:
    im = Image.new("LA", (64, 64), (90, 255))
    im.putpixel((0, 0), (90, 17))
    decoded = decode_image(encode(im))
    assert decoded.info.mode == "LA"
    assert decoded.rgb.getpixel((5, 5)) == (90, 90, 90)
    assert decoded.alpha is not None and decoded.alpha.getpixel((0, 0)) == 17


def test_rgba_alpha_separate_and_grey_plain() -> None:
    rgba = Image.new("RGBA", (64, 64), (10, 20, 30, 40))
    decoded = decode_image(encode(rgba))
    assert decoded.rgb.getpixel((1, 1)) == (10, 20, 30)
    assert decoded.alpha is not None and decoded.alpha.getpixel((1, 1)) == 40
    grey = decode_image(encode(Image.new("L", (64, 64), 77)))
    assert grey.rgb.getpixel((3, 3)) == (77, 77, 77) and grey.alpha is None


def test_exif_orientation_applied() -> None:
    im = rgb(200, 120, (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 100, 120))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was rotated: display turned 90 degrees clockwise
    decoded = decode_image(encode(im, "JPEG", exif=exif.tobytes(), quality=95))
    assert decoded.rgb.size == (120, 200)
    assert (decoded.info.width, decoded.info.height) == (120, 200)
    r, _, b = decoded.rgb.getpixel((60, 20))  # type: ignore[misc]
    assert r > 200 and b < 60  # the former left half is now on top


# --- rejections ---------------------------------------------------------------------------


def rejection_code(data: bytes, **kwargs: int) -> str:
    with pytest.raises(Exception) as info:
        decode_image(data, **kwargs)
    code = getattr(info.value, "code", None)
    assert code in REJECTION_CODES, info.value
    assert str(info.value)  # a human reason
    return str(code)


def test_every_rejection_code() -> None:
    frames = [rgb(colour=(i * 40, 0, 0)) for i in range(3)]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    apng = encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    webp_anim = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:])
    assert rejection_code(b"") == "empty_file"
    assert rejection_code(b"hello, this is text\n") == "not_an_image"
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    full = encode(noisy)
    assert rejection_code(full[: len(full) // 2]) == "undecodable"  # truncated
    assert rejection_code(encode(noisy, "JPEG")[:400]) == "undecodable"
    assert rejection_code(gif) == "animated"
    assert rejection_code(apng) == "animated"
    assert rejection_code(webp_anim) == "animated"
    assert rejection_code(encode(rgb(), "GIF")) == "unsupported_format"
    assert rejection_code(encode(rgb(), "TIFF")) == "unsupported_format"
    assert rejection_code(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64) == "unsupported_format"
    assert rejection_code(b"P6 is how this text starts") == "not_an_image"
    assert rejection_code(b"\x89PNG\r\n\x1a\n but broken") == "undecodable"
    assert rejection_code(encode(rgb(63, 500))) == "too_small"
    assert rejection_code(encode(rgb()), max_bytes=100) == "too_large"


def test_decompression_bomb_refused_from_header() -> None:
    # Beyond PIL's own hard limit (its error is caught and reported the same way).
    assert rejection_code(png_with_declared_size(100_000, 100_000)) == "decompression_bomb"
    # Under PIL's limit but over ours: checked before a single pixel is decoded.
    assert rejection_code(png_with_declared_size(3000, 3000), max_pixels=4_000_000) == "decompression_bomb"
    # A configurable limit: the same header passes the size check and only then fails to decode.
    assert rejection_code(png_with_declared_size(3000, 3000), max_pixels=10_000_000) == "undecodable"


def test_decode_needs_no_torch() -> None:
    assert "core.data.validate" in sys.modules
    # Run in a fresh interpreter so other tests' imports do not hide a torch import.
    import subprocess

    code = "import sys, core.data, core.data.validate, core.data.templates; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- folder scanning ----------------------------------------------------------------------


def write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)


def test_scan_folder_captions_unicode_junk_and_report(tmp_path: Path) -> None:
    img = encode(rgb())
    write(tmp_path / "一只红色的猫.png", img)
    write(tmp_path / "一只红色的猫.txt", "\ufeff红色的猫,\r\n  坐着\t")
    write(tmp_path / "0012-水墨画.jpg", encode(rgb(80, 64, (1, 2, 3)), "JPEG"))
    write(tmp_path / "sub" / "copy.png", img)  # a byte-identical duplicate
    write(tmp_path / "orphan.txt", "no image for me")
    write(tmp_path / "notes.png", "not really a png")
    write(tmp_path / ".DS_Store", b"\x00\x01")
    write(tmp_path / "Thumbs.db", b"junk")
    write(tmp_path / ".hidden" / "x.png", img)
    write(tmp_path / "long.png", encode(rgb(64, 64, (9, 9, 9))))
    write(tmp_path / "long.txt", " ".join(["word"] * 80))

    items, report = scan_folder(tmp_path)
    by_name = {it.name: it for it in items}
    assert set(by_name) == {"一只红色的猫.png", "0012-水墨画.jpg", "sub/copy.png", "long.png"}
    assert by_name["一只红色的猫.png"].caption == "红色的猫, 坐着"
    assert by_name["一只红色的猫.png"].caption_from_txt
    assert by_name["0012-水墨画.jpg"].caption == "水墨画"
    assert not by_name["0012-水墨画.jpg"].caption_from_txt
    assert by_name["sub/copy.png"].read_bytes() == img

    d: dict[str, Any] = report.to_dict()
    assert d["accepted"] == 4
    assert [(r["file"], r["code"]) for r in d["rejected"]] == [("notes.png", "not_an_image")]
    assert {i["file"] for i in d["ignored"]} == {".DS_Store", "Thumbs.db", ".hidden/x.png"}
    assert d["sizes"] == {"64x64": 3, "80x64": 1}
    caps = d["captions"]
    assert caps["with_txt"] == 2 and caps["from_filename"] == 2 and caps["over_limit"] == 1
    codes = {w["code"]: w for w in d["warnings"]}
    assert set(codes) >= {"caption_too_long", "duplicate_image", "unpaired_caption"}
    assert set(codes["duplicate_image"]["files"]) == {"一只红色的猫.png", "sub/copy.png"}
    assert codes["unpaired_caption"]["files"] == ["orphan.txt"]


def test_filename_caption_source_ignores_txt(tmp_path: Path) -> None:
    write(tmp_path / "00001-0-a blue box.png", encode(rgb()))
    write(tmp_path / "00001-0-a blue box.txt", "a caption that is not used")
    items, report = scan_folder(tmp_path, caption_source="filename")
    assert [it.caption for it in items] == ["a blue box"]
    assert report.caption_count == 0
    assert [w.code for w in report.warnings] == ["caption_file_unused"]


def test_empty_folder_reports_nothing_accepted(tmp_path: Path) -> None:
    write(tmp_path / "bad.png", b"")
    items, report = scan_folder(tmp_path)
    assert items == [] and report.accepted == 0
    assert [r.code for r in report.rejected] == ["empty_file"]
    with pytest.raises(DatasetError):
        scan_folder(tmp_path / "missing")


# --- zip scanning -------------------------------------------------------------------------


def test_scan_zip_in_memory(tmp_path: Path) -> None:
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("set/猫.png", encode(rgb()))
        zf.writestr("set/猫.txt", "一只猫")
        zf.writestr("set/02-dog.webp", encode(rgb(70, 64), "WEBP"))
        zf.writestr("__MACOSX/set/._猫.png", b"\x00\x05\x16\x07")
        zf.writestr("set/.DS_Store", b"\x00")
        zf.writestr("../escape.png", encode(rgb()))  # a hostile name is only ever a label
        zf.writestr("set/truncated.jpg", encode(rgb(), "JPEG")[:200])
    before = sorted(p.name for p in tmp_path.parent.iterdir())

    items, report = scan_zip(archive)
    assert [it.name for it in items] == ["escape.png", "set/02-dog.webp", "set/猫.png"]
    cat = items[2]
    assert cat.caption == "一只猫" and cat.member == "set/猫.png"
    assert items[1].caption == "dog"
    assert cat.decode().rgb.size == (64, 64)
    assert [(r.file, r.code) for r in report.rejected] == [("set/truncated.jpg", "undecodable")]
    assert {i.file for i in report.ignored} == {"__MACOSX/set/._猫.png", "set/.DS_Store"}
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == before  # nothing extracted
    assert scan_path(archive)[1].accepted == 3


def test_scan_zip_member_size_cap_and_bad_archive(tmp_path: Path) -> None:
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.png", b"\x00" * 200_000)  # compresses to almost nothing
    _, report = scan_zip(archive, max_bytes=100_000)
    assert [r.code for r in report.rejected] == ["too_large"]
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DatasetError) as info:
        scan_zip(bad)
    assert info.value.code == "invalid_archive"
