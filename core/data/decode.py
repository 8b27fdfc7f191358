"""Decode and judge one image by its content (never by its extension); torch-free.

``decode_image`` returns the picture as RGB plus a separate alpha channel (for
``use_weight``), with EXIF orientation applied, or raises ``ImageRejectedError``
whose ``code`` is one of ``REJECTION_CODES``. The declared pixel count is checked
from the header before any pixel is decoded, so a decompression bomb costs
nothing.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from core.errors import HyperforgeError

MIN_SIDE: Final = 64
DEFAULT_MAX_PIXELS: Final = 64 * 1024 * 1024
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024

# Formats we train on; MPO is what cameras write for JPEGs with a preview frame.
ACCEPTED_FORMATS: Final = frozenset({"PNG", "JPEG", "MPO", "WEBP", "BMP"})
# Formats PIL may identify at all (MPO comes through the JPEG plugin): anything else is "not an
# image" to us, which also keeps PIL's rarer (and less hardened) parsers away from untrusted bytes.
# Only formats with a real signature: lenient ones (TGA, PPM) would claim random text files.
_OPEN_FORMATS: Final = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
_SIGNATURES: Final = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"BM",
    b"GIF87a",
    b"GIF89a",
    b"II*\x00",
    b"MM\x00*",
)
_ALPHA_MODES: Final = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})

REJECTION_CODES: Final = (
    "empty_file",
    "too_large",
    "not_an_image",
    "unsupported_format",
    "animated",
    "decompression_bomb",
    "undecodable",
    "too_small",
)


class ImageRejectedError(HyperforgeError, ValueError):
    """One image cannot be used; ``code`` is one of ``REJECTION_CODES``."""

    code = "image_rejected"

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail, code=code)
        self.detail = detail


@dataclass(frozen=True)
class ImageInfo:
    """What a dataset report needs to know about one accepted image."""

    width: int
    height: int
    mode: str
    format: str
    has_alpha: bool
    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready form."""
        return {
            "width": self.width,
            "height": self.height,
            "mode": self.mode,
            "format": self.format,
            "has_alpha": self.has_alpha,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image: ``rgb`` (mode RGB), ``alpha`` (mode L or None) and its info."""

    info: ImageInfo
    rgb: Image.Image
    alpha: Image.Image | None
    notes: tuple[str, ...] = ()


def inspect_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = MIN_SIDE
) -> ImageInfo:
    """Fully decode ``data`` to judge it and return its info (raises ``ImageRejectedError``)."""
    return decode_image(data, max_pixels=max_pixels, min_side=min_side).info


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = MIN_SIDE,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> DecodedImage:
    """Decode image bytes to RGB + alpha with EXIF orientation applied, or reject them."""
    if len(data) == 0:
        raise ImageRejectedError("empty_file", "the file is empty")
    if len(data) > max_bytes:
        raise ImageRejectedError("too_large", f"{len(data)} bytes is over the limit of {max_bytes}")
    with warnings.catch_warnings():
        # PIL warns (instead of raising) between MAX_IMAGE_PIXELS and twice that.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = _open_checked(data, max_pixels)
            source_mode, source_format = im.mode, _format_name(im)
            im.load()
        except ImageRejectedError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejectedError("decompression_bomb", str(exc)) from exc
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, EOFError, zlib errors
            raise ImageRejectedError("undecodable", f"cannot decode: {exc}") from exc
    im, notes = _apply_orientation(im)
    if min(im.size) < min_side:
        raise ImageRejectedError(
            "too_small", f"{im.width}x{im.height} is smaller than {min_side} px on a side"
        )
    rgb, alpha = to_rgb_and_alpha(im)
    info = ImageInfo(
        width=rgb.width,
        height=rgb.height,
        mode=source_mode,
        format=source_format,
        has_alpha=alpha is not None,
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    return DecodedImage(info=info, rgb=rgb, alpha=alpha, notes=notes)


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) and apply the format, animation and pixel-count rules."""
    try:
        im = Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)
    except UnidentifiedImageError as exc:
        if data[4:8] == b"ftyp":  # ISO media: HEIC/AVIF photos from phones
            brand = data[8:12].decode("latin-1")
            raise ImageRejectedError(
                "unsupported_format", f"{brand!r} (HEIC/AVIF) images are not accepted"
            ) from exc
        if _looks_like_image(data):
            raise ImageRejectedError("undecodable", "an image signature, but a broken header") from exc
        raise ImageRejectedError("not_an_image", "the content is not a recognised image") from exc
    fmt = im.format or "?"
    frames = int(getattr(im, "n_frames", 1) or 1)
    if frames > 1 and fmt != "MPO":
        raise ImageRejectedError("animated", f"animated {fmt} with {frames} frames")
    if fmt not in ACCEPTED_FORMATS:
        raise ImageRejectedError(
            "unsupported_format", f"{fmt} images are not accepted (png, jpeg, webp, bmp)"
        )
    width, height = im.size
    if width * height > max_pixels:
        raise ImageRejectedError(
            "decompression_bomb", f"declares {width}x{height} = {width * height} pixels (max {max_pixels})"
        )
    return im


def _looks_like_image(data: bytes) -> bool:
    """Whether the bytes start with the signature of an image format we know."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return True
    if data[:2] == b"BM" and data[6:10] == b"\x00\x00\x00\x00":  # BMP: reserved header fields are zero
        return True
    return data.startswith(_SIGNATURES)


def _format_name(im: Image.Image) -> str:
    """The container format, with MPO reported as the JPEG it is."""
    fmt = im.format or "?"
    return "JPEG" if fmt == "MPO" else fmt


def _apply_orientation(im: Image.Image) -> tuple[Image.Image, tuple[str, ...]]:
    """Rotate/mirror per the EXIF orientation tag; a broken EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(im), ()
    except Exception as exc:  # malformed EXIF must not cost the user a good picture
        return im, (f"EXIF orientation ignored: {exc}",)


def to_rgb_and_alpha(im: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """Convert any decoded mode to 8-bit RGB, returning the alpha channel (mode L) separately."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        return _sixteen_bit_to_rgb(im), None
    if mode == "CMYK":
        return _cmyk_to_rgb(im), None
    has_alpha = mode in _ALPHA_MODES or "transparency" in im.info
    if has_alpha:
        # Palette/L/RGB images with a tRNS colour key become real alpha here.
        rgba = im.convert("RGBA")
        return rgba.convert("RGB"), rgba.getchannel("A")
    if mode == "RGB":
        return im, None
    return im.convert("RGB"), None


def _sixteen_bit_to_rgb(im: Image.Image) -> Image.Image:
    """Scale 16-bit grey (I;16*, or I holding 0..65535) down to 8 bits instead of clipping."""
    arr = np.asarray(im).astype(np.float64)  # (H, W)
    grey = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    """Use the embedded ICC profile when there is one, else PIL's plain formula."""
    icc = im.info.get("icc_profile")
    if icc:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            out = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
            if out is not None:
                return out
        except (ImageCms.PyCMSError, OSError):
            pass  # a broken profile: the plain conversion below is still a usable picture
    return im.convert("RGB")
