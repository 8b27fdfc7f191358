"""A1111's Preprocess tab as a function: folder in, cropped PNGs (+ captions) out.

For each source image (EXIF orientation applied, alpha kept): split when oversized,
focal-point crop when not square, auto-sized crop, each when enabled and each
writing its own outputs as A1111 does; when none ran, scale-to-cover and
centre-crop. Every output is written as ``{index:05}-{sub}-{name}.png`` and, with
``flip``, its mirror as the next ``sub``. The caption beside it combines the
source's ``.txt`` (``caption_action``) and the tagger's tags (``tag_action``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image, ImageOps

from core.data.captions import join_tags, read_caption_bytes, split_tags
from core.data.decode import DEFAULT_MAX_PIXELS, ImageRejectedError, decode_image
from core.data.report import Rejection
from core.errors import InvalidOptionError
from core.preprocess.crops import AutocropSettings, auto_crop, cover_resize, should_split, split_oversized
from core.preprocess.focal import FaceDetector, FocalWeights, focal_crop
from core.preprocess.tagger import WD14Tagger

CaptionAction = Literal["ignore", "copy", "prepend", "append"]
TagAction = Literal["append", "prepend", "replace"]
CAPTION_ACTIONS: tuple[CaptionAction, ...] = ("ignore", "copy", "prepend", "append")
TAG_ACTIONS: tuple[TagAction, ...] = ("append", "prepend", "replace")


@dataclass(frozen=True)
class PreprocessOptions:
    """Every option of the Preprocess tab (A1111's defaults)."""

    width: int = 512
    height: int = 512
    caption_action: CaptionAction = "ignore"
    flip: bool = False
    split: bool = False
    split_threshold: float = 0.5
    overlap_ratio: float = 0.2
    focal_crop: bool = False
    focal_weights: FocalWeights = field(default_factory=FocalWeights)
    auto_crop: bool = False
    autocrop: AutocropSettings = field(default_factory=AutocropSettings)
    general_threshold: float = 0.35
    character_threshold: float = 0.85
    exclude_tags: tuple[str, ...] = ()
    tag_action: TagAction | None = None  # None: placement follows caption_action, as in A1111
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        checks = [
            ("width", self.width >= 64, "must be at least 64"),
            ("height", self.height >= 64, "must be at least 64"),
            ("caption_action", self.caption_action in CAPTION_ACTIONS, f"one of {CAPTION_ACTIONS}"),
            (
                "tag_action",
                self.tag_action is None or self.tag_action in TAG_ACTIONS,
                f"one of {TAG_ACTIONS}",
            ),
            ("split_threshold", 0.0 <= self.split_threshold <= 1.0, "must be within [0, 1]"),
            ("overlap_ratio", 0.0 <= self.overlap_ratio <= 0.9, "must be within [0, 0.9]"),
            ("tag_threshold", 0.0 <= self.general_threshold <= 1.0, "must be within [0, 1]"),
            ("character_threshold", 0.0 <= self.character_threshold <= 1.0, "must be within [0, 1]"),
        ]
        for option, ok, message in checks:
            if not ok:
                raise InvalidOptionError(message, option=option)


@dataclass(frozen=True)
class PreprocessResult:
    """What was written, and the source files that could not be used."""

    images: tuple[Path, ...]
    captions: tuple[Path, ...]
    skipped: tuple[Rejection, ...]


def combine_caption(
    existing: str | None,
    tags: list[str] | None,
    caption_action: CaptionAction,
    tag_action: TagAction | None = None,
) -> str:
    """The output caption from the source's caption and the tagger's tags (``None``: no tagger).

    Without tags: the existing caption unless ``ignore``. With tags and no ``tag_action``, A1111's
    rules with the tags as the generated caption: ignore -> tags, copy -> existing (else tags),
    prepend -> existing then tags, append -> tags then existing. An explicit ``tag_action`` places
    the tags after (append) or before (prepend) the kept caption, or alone (replace). Tags already
    in the existing caption are not repeated.
    """
    kept = (existing or "").strip() if caption_action != "ignore" else ""
    if tags is None:
        return kept
    if tag_action is None:
        if caption_action == "copy":
            return kept or join_tags(tags)
        implied: dict[str, TagAction] = {"ignore": "replace", "prepend": "append", "append": "prepend"}
        tag_action = implied[caption_action]
    present = {t.lower() for t in split_tags(kept)}
    new = [t for t in tags if t.lower() not in present]
    if tag_action == "replace" or not kept:
        return join_tags(tags)
    if not new:
        return kept
    return f"{kept}, {join_tags(new)}" if tag_action == "append" else f"{join_tags(new)}, {kept}"


def process_image(
    image: Image.Image, options: PreprocessOptions, face_detector: FaceDetector | None = None
) -> list[Image.Image]:
    """The crops one source image yields (before flipping), in A1111's order."""
    w, h = options.width, options.height
    out: list[Image.Image] = []
    ran = False
    if options.split and should_split(image.width, image.height, w, h, options.split_threshold):
        out.extend(split_oversized(image, w, h, options.overlap_ratio))
        ran = True
    if options.focal_crop and image.width != image.height:
        out.append(focal_crop(image, w, h, options.focal_weights, face_detector))
        ran = True
    if options.auto_crop:
        cropped = auto_crop(image, options.autocrop)
        if cropped is not None:
            out.append(cropped)
        ran = True  # A1111 skips the image when no size fits, rather than falling back
    if not ran:
        out.append(cover_resize(image, w, h))
    return out


def preprocess_folder(
    src: str | Path,
    dst: str | Path,
    options: PreprocessOptions | None = None,
    *,
    tagger: WD14Tagger | None = None,
    face_detector: FaceDetector | None = None,
) -> PreprocessResult:
    """Preprocess every image directly in ``src`` into ``dst`` (created if missing)."""
    opts = options or PreprocessOptions()
    src_dir, dst_dir = Path(src), Path(dst)
    if not src_dir.is_dir():
        raise InvalidOptionError(f"not a folder: {src_dir}", option="src")
    if src_dir.resolve() == dst_dir.resolve():
        raise InvalidOptionError("the destination must differ from the source", option="dst")
    dst_dir.mkdir(parents=True, exist_ok=True)
    images: list[Path] = []
    captions: list[Path] = []
    skipped: list[Rejection] = []
    index = 0
    for path in _source_images(src_dir):
        try:
            decoded = decode_image(path.read_bytes(), max_pixels=opts.max_pixels, min_side=1)
        except ImageRejectedError as exc:
            skipped.append(Rejection(path.name, exc.code, exc.detail))
            continue
        image = decoded.rgb
        if decoded.alpha is not None:  # kept, so use_weight can train on the crops
            image = decoded.rgb.copy()
            image.putalpha(decoded.alpha)
        existing = _existing_caption(path)
        outputs = process_image(image, opts, face_detector)
        if opts.flip:
            outputs = [img for crop in outputs for img in (crop, ImageOps.mirror(crop))]
        for sub, img in enumerate(outputs):
            tags = None
            if tagger is not None:
                tags = tagger.tags(img, opts.general_threshold, opts.character_threshold, opts.exclude_tags)
            caption = combine_caption(existing, tags, opts.caption_action, opts.tag_action)
            base = dst_dir / f"{index:05}-{sub}-{path.stem}"
            img.save(base.with_name(base.name + ".png"), format="PNG")
            images.append(base.with_name(base.name + ".png"))
            if caption:
                base.with_name(base.name + ".txt").write_text(caption, encoding="utf-8")
                captions.append(base.with_name(base.name + ".txt"))
        index += 1
    return PreprocessResult(tuple(images), tuple(captions), tuple(skipped))


def _source_images(src: Path) -> Iterator[Path]:
    """Files directly in ``src`` that may be images: not captions, not hidden, sorted by name."""
    for path in sorted(src.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() != ".txt":
            yield path


def _existing_caption(image_path: Path) -> str | None:
    """The caption beside a source image, normalised, or None."""
    txt = image_path.with_suffix(".txt")
    if not txt.is_file():
        return None
    return read_caption_bytes(txt.read_bytes())[0]
