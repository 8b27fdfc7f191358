"""The training dataset: images from a folder or zip as pixel tensors, raw captions and loss weights.

Items are loaded lazily (the trainer encodes each once and caches the latent), so
memory holds no pixels between calls. With ``flip`` every image also appears
mirrored as its own item (index ``2*i + 1``), so it gets its own cached latent; the
resized original is kept only until its mirror is read, so it is decoded once.
Without bucketing every image is scaled to cover ``width`` x ``height`` and
centre-cropped; with bucketing it goes to the nearest-aspect bucket
(``core.data.buckets``) and batches never mix buckets (``BucketBatchSampler``).

    ds = TrainingDataset.from_path(path, DatasetOptions(width=512, height=512, flip=True))
    sampler = ds.sampler(batch_size, seed=seed)          # state_dict()/load_state_dict() to resume
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate_items)  # num_workers=0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from core.data.buckets import Bucket, assign_buckets, cover_crop_box, make_buckets
from core.data.decode import DEFAULT_MAX_PIXELS
from core.data.report import DatasetReport
from core.data.sampler import BucketBatchSampler
from core.data.validate import CaptionSource, DatasetItem, scan_path
from core.errors import DatasetError, InvalidOptionError


@dataclass(frozen=True)
class DatasetOptions:
    """How images become training tensors (names follow A1111's training options)."""

    width: int = 512
    height: int = 512
    bucketing: bool = False  # A1111's varsize, done with aspect-ratio buckets
    bucket_min_side: int | None = None  # default: half the short side (multiple of 64)
    bucket_max_side: int | None = None  # default: twice the long side (multiple of 64)
    flip: bool = False
    use_weight: bool = False
    caption_source: CaptionSource = "txt"
    latent_factor: int = 8  # the VAE's downscale factor: weight maps are H/8 x W/8
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        f = self.latent_factor
        for option, value in (("width", self.width), ("height", self.height)):
            if value < f or value % f:
                raise InvalidOptionError(f"must be a positive multiple of {f}, got {value}", option=option)


@dataclass(frozen=True)
class TrainingItem:
    """One sample: ``pixels`` (3, H, W) in [-1, 1], the raw caption, ``weight`` (1, H/8, W/8) or None."""

    index: int
    name: str
    caption: str
    pixels: torch.Tensor
    weight: torch.Tensor | None
    flipped: bool


@dataclass(frozen=True)
class TrainingBatch:
    """Items of one bucket stacked: ``pixels`` (B, 3, H, W), ``weights`` (B, 1, H/8, W/8) or None."""

    indices: list[int]
    captions: list[str]
    pixels: torch.Tensor
    weights: torch.Tensor | None


class TrainingDataset(torch.utils.data.Dataset[TrainingItem]):
    """Accepted images of a scanned dataset, with flips, resizing or buckets, and weight maps."""

    def __init__(
        self, items: Sequence[DatasetItem], options: DatasetOptions, report: DatasetReport | None = None
    ) -> None:
        if not items:
            raise DatasetError("the dataset has no usable image", code="empty_dataset")
        self.options = options
        self.report = report
        self.items = list(items)
        # (source item, mirrored?) for every dataset index; a mirror sits right after its original.
        self._entries = [
            (i, flip)
            for i in range(len(self.items))
            for flip in ((False, True) if options.flip else (False,))
        ]
        if options.bucketing:
            self.buckets = make_buckets(
                options.width,
                options.height,
                min_side=options.bucket_min_side,
                max_side=options.bucket_max_side,
            )
            per_item = assign_buckets([(it.info.width, it.info.height) for it in self.items], self.buckets)
        else:
            self.buckets = (Bucket(options.width, options.height),)
            per_item = [self.buckets[0]] * len(self.items)
        self._item_bucket = per_item
        # Computed once: the trainer reads them every step.
        self._captions = [self.items[src].caption for src, _ in self._entries]
        self._sizes = [(per_item[src].width, per_item[src].height) for src, _ in self._entries]
        # With ``flip`` the mirror (index 2*i + 1) is read right after its original: keep the
        # resized original until then so each image is decoded and resized once, not twice.
        self._pending_mirror: tuple[int, Image.Image, Image.Image | None] | None = None

    @classmethod
    def from_path(cls, path: str | Path, options: DatasetOptions | None = None) -> TrainingDataset:
        """Scan a folder or zip and build the dataset (``DatasetError`` when no image is usable)."""
        opts = options or DatasetOptions()
        items, report = scan_path(path, opts.caption_source, max_pixels=opts.max_pixels)
        if not items:
            codes = ", ".join(sorted({r.code for r in report.rejected})) or "none found"
            raise DatasetError(
                f"no usable image in {path} ({len(report.rejected)} rejected: {codes})",
                code="empty_dataset",
            )
        return cls(items, opts, report)

    def __len__(self) -> int:
        """Number of samples (twice the images with ``flip``)."""
        return len(self._entries)

    @property
    def captions(self) -> list[str]:
        """The raw caption of every sample (templates are applied per step by the trainer)."""
        return self._captions

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """(width, height) of every sample's pixels."""
        return self._sizes

    def bucket_of(self, index: int) -> Bucket:
        """The bucket (pixel size) of sample ``index``."""
        return self._item_bucket[self._entries[index][0]]

    def sampler(self, batch_size: int, *, seed: int = 0, drop_last: bool = False) -> BucketBatchSampler:
        """A batch sampler whose batches stay within one bucket."""
        return BucketBatchSampler(self.sizes, batch_size, seed=seed, drop_last=drop_last)

    def __getitem__(self, index: int) -> TrainingItem:
        """Load, resize/crop, optionally mirror, and convert sample ``index``."""
        src, flipped = self._entries[index]
        item = self.items[src]
        pending, self._pending_mirror = self._pending_mirror, None
        if flipped and pending is not None and pending[0] == src:
            rgb, alpha = pending[1], pending[2]
        else:
            rgb, alpha = self._resized(src)
        if flipped:
            rgb = ImageOps.mirror(rgb)
            alpha = ImageOps.mirror(alpha) if alpha is not None else None
        elif self.options.flip:
            self._pending_mirror = (src, rgb, alpha)
        return TrainingItem(
            index=index,
            name=item.name,
            caption=item.caption,
            pixels=pixels_from_image(rgb),
            weight=weight_from_alpha(np.asarray(alpha)) if alpha is not None else None,
            flipped=flipped,
        )

    def _resized(self, src: int) -> tuple[Image.Image, Image.Image | None]:
        """Decode image ``src`` and scale-and-crop it (and its alpha, for weights) to its bucket."""
        bucket = self._item_bucket[src]
        decoded = self.items[src].decode(max_pixels=self.options.max_pixels)
        box = cover_crop_box(decoded.rgb.width, decoded.rgb.height, bucket.width, bucket.height)
        rgb = decoded.rgb.resize((bucket.width, bucket.height), Image.Resampling.LANCZOS, box=box)
        alpha = None
        if self.options.use_weight and decoded.alpha is not None:
            f = self.options.latent_factor
            # BOX averages the alpha over each latent cell's footprint.
            alpha = decoded.alpha.resize(
                (bucket.width // f, bucket.height // f), Image.Resampling.BOX, box=box
            )
        return rgb, alpha


def pixels_from_image(rgb: Image.Image) -> torch.Tensor:
    """An RGB image as a float32 tensor (3, H, W) in [-1, 1]."""
    arr = np.asarray(rgb.convert("RGB"), dtype=np.float32)  # (H, W, 3) in 0..255
    return torch.from_numpy(arr / 127.5 - 1.0).permute(2, 0, 1).contiguous()


def weight_from_alpha(alpha: np.ndarray) -> torch.Tensor:
    """A per-pixel loss weight (1, h, w) from an alpha map (h, w): alpha / mean(alpha); constant -> ones.

    A1111 also subtracts the minimum first, which divides by zero for a constant alpha
    and makes a faint background weigh nothing; scaling alone keeps mean 1 without either.
    """
    a = alpha.astype(np.float64)
    mean = a.mean()
    if not np.isfinite(mean) or mean <= 0.0 or a.max() == a.min():
        # Constant (or fully transparent) alpha: every pixel counts equally, never NaN.
        return torch.ones((1, *alpha.shape), dtype=torch.float32)
    return torch.from_numpy((a / mean).astype(np.float32)).unsqueeze(0)


def collate_items(items: Sequence[TrainingItem]) -> TrainingBatch:
    """Stack items of one bucket; when only some have weights, the others weigh 1 everywhere."""
    if not items:
        raise InvalidOptionError("an empty batch", option="batch_size")
    shapes = {tuple(it.pixels.shape) for it in items}
    if len(shapes) != 1:
        raise InvalidOptionError(f"a batch mixes sizes {sorted(shapes)}", option="batch_size")
    weights = None
    if any(it.weight is not None for it in items):
        shape = next(it.weight.shape for it in items if it.weight is not None)
        ones = torch.ones(shape)
        weights = torch.stack([it.weight if it.weight is not None else ones for it in items])
    return TrainingBatch(
        indices=[it.index for it in items],
        captions=[it.caption for it in items],
        pixels=torch.stack([it.pixels for it in items]),
        weights=weights,
    )
