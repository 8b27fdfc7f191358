"""The training dataset: pixel tensors, cover-crop, flips, buckets, weight maps, collation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.data.buckets import Bucket
from core.data.dataset import (
    DatasetOptions,
    TrainingDataset,
    collate_items,
    weight_from_alpha,
)
from core.errors import DatasetError, InvalidOptionError


def save(path: Path, im: Image.Image, caption: str | None = None) -> None:
    im.save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")


def three_bands(w: int, h: int) -> Image.Image:
    """Red | green | blue vertical bands, a quarter / half / quarter of the width."""
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, : w // 4, 0] = 255
    arr[:, w // 4 : 3 * w // 4, 1] = 255
    arr[:, 3 * w // 4 :, 2] = 255
    return Image.fromarray(arr)


def test_pixels_are_in_range_and_cover_cropped(tmp_path: Path) -> None:
    save(tmp_path / "bands.png", three_bands(128, 64), "bands")
    ds = TrainingDataset.from_path(tmp_path, DatasetOptions(width=64, height=64))
    item = ds[0]
    assert item.pixels.shape == (3, 64, 64) and item.pixels.dtype == torch.float32
    assert item.pixels.min() >= -1.0 and item.pixels.max() <= 1.0
    # Scale-to-cover keeps the middle half: only green survives, nothing stretched.
    green = item.pixels[1]
    assert torch.all(green[:, 4:-4] > 0.9)
    assert torch.all(item.pixels[0, :, 4:-4] < -0.9)
    assert item.caption == "bands" and item.weight is None and not item.flipped


def test_flip_adds_a_true_mirror_as_its_own_item(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    save(tmp_path / "a.png", Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "a")
    save(tmp_path / "b.png", Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "b")
    ds = TrainingDataset.from_path(tmp_path, DatasetOptions(width=64, height=64, flip=True))
    assert len(ds) == 4
    assert ds.captions == ["a", "a", "b", "b"]
    original, mirrored = ds[0], ds[1]
    assert not original.flipped and mirrored.flipped
    assert torch.equal(mirrored.pixels, torch.flip(original.pixels, dims=[2]))
    assert not torch.equal(mirrored.pixels, original.pixels)


def rgba_with_alpha(alpha: np.ndarray) -> Image.Image:
    h, w = alpha.shape
    arr = np.dstack([np.full((h, w, 3), 120, dtype=np.uint8), alpha.astype(np.uint8)])
    return Image.fromarray(arr, mode="RGBA")


def test_use_weight_maps_alpha_to_latent_size(tmp_path: Path) -> None:
    alpha = np.zeros((64, 64))
    alpha[:, 32:] = 255
    save(tmp_path / "half.png", rgba_with_alpha(alpha), "half")
    save(tmp_path / "flat.png", rgba_with_alpha(np.full((64, 64), 128)), "flat")
    save(tmp_path / "none.png", Image.new("RGB", (64, 64), (1, 2, 3)), "none")
    opts = DatasetOptions(width=64, height=64, use_weight=True, flip=True)
    ds = TrainingDataset.from_path(tmp_path, opts)
    names = [ds[i].name for i in range(len(ds))]
    flat, _, half, half_m, none, _ = (ds[i] for i in range(len(ds)))
    assert names[0] == "flat.png" and names[2] == "half.png"
    assert flat.weight is not None and torch.equal(flat.weight, torch.ones(1, 8, 8))
    assert half.weight is not None and half.weight.shape == (1, 8, 8)
    assert torch.isfinite(half.weight).all()
    assert half.weight.mean().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.all(half.weight[0, :, :4] == 0) and torch.all(half.weight[0, :, 4:] == 2)
    assert half_m.weight is not None and torch.equal(half_m.weight, torch.flip(half.weight, dims=[2]))
    assert none.weight is None
    without = TrainingDataset.from_path(tmp_path, DatasetOptions(width=64, height=64))
    assert all(without[i].weight is None for i in range(len(without)))


@pytest.mark.parametrize("value", [0, 1, 128, 255])
def test_constant_alpha_gives_exact_ones(value: int) -> None:
    w = weight_from_alpha(np.full((8, 8), value, dtype=np.uint8))
    assert torch.equal(w, torch.ones(1, 8, 8))


def test_weight_normalised_to_mean_one() -> None:
    alpha = np.random.default_rng(3).integers(0, 256, (16, 24)).astype(np.uint8)
    w = weight_from_alpha(alpha)
    assert w.shape == (1, 16, 24)
    assert w.mean().item() == pytest.approx(1.0, rel=1e-5)
    assert torch.isfinite(w).all() and (w >= 0).all()


def test_bucketing_groups_by_aspect_and_sampler_keeps_buckets(tmp_path: Path) -> None:
    for i in range(3):
        save(tmp_path / f"wide{i}.png", three_bands(256, 128), f"wide {i}")
        save(tmp_path / f"square{i}.png", Image.new("RGB", (100, 100), (i, i, i)), f"square {i}")
    opts = DatasetOptions(width=128, height=128, bucketing=True)
    ds = TrainingDataset.from_path(tmp_path, opts)
    sizes = ds.sizes
    assert set(sizes) == {(192, 64), (128, 128)}
    for b in ds.buckets:
        assert b.area <= 128 * 128 and b.width % 64 == 0 and b.height % 64 == 0
    wide = next(i for i in range(len(ds)) if ds[i].name.startswith("wide"))
    assert ds.bucket_of(wide) == Bucket(192, 64)
    assert ds[wide].pixels.shape == (3, 64, 192)
    sampler = ds.sampler(batch_size=2, seed=0)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for batch in batches:
        collated = collate_items([ds[i] for i in batch])
        assert len({sizes[i] for i in batch}) == 1
        assert collated.pixels.shape[0] == len(batch)


def test_collate_fills_missing_weights_with_ones(tmp_path: Path) -> None:
    alpha = np.zeros((64, 64))
    alpha[:32] = 255
    save(tmp_path / "a.png", rgba_with_alpha(alpha), "with alpha")
    save(tmp_path / "b.png", Image.new("RGB", (64, 64)), "no alpha")
    ds = TrainingDataset.from_path(tmp_path, DatasetOptions(width=64, height=64, use_weight=True))
    batch = collate_items([ds[0], ds[1]])
    assert batch.pixels.shape == (2, 3, 64, 64)
    assert batch.weights is not None and batch.weights.shape == (2, 1, 8, 8)
    assert torch.equal(batch.weights[1], torch.ones(1, 8, 8))
    assert batch.captions == ["with alpha", "no alpha"] and batch.indices == [0, 1]
    plain = TrainingDataset.from_path(tmp_path, DatasetOptions(width=64, height=64))
    assert collate_items([plain[0], plain[1]]).weights is None


def test_works_as_a_torch_dataloader(tmp_path: Path) -> None:
    for i in range(5):
        save(tmp_path / f"{i}.png", Image.new("RGB", (64, 64), (i * 40, 0, 0)), f"img {i}")
    ds = TrainingDataset.from_path(tmp_path, DatasetOptions(width=64, height=64))
    loader = torch.utils.data.DataLoader(ds, batch_sampler=ds.sampler(2, seed=3), collate_fn=collate_items)
    batches = list(loader)
    assert sorted(len(b.indices) for b in batches) == [1, 2, 2]
    assert sorted(i for b in batches for i in b.indices) == list(range(5))
    assert all(b.captions == [f"img {i}" for i in b.indices] for b in batches)


def test_zip_source_and_errors(tmp_path: Path) -> None:
    import io
    import zipfile

    buf = io.BytesIO()
    Image.new("RGB", (96, 64), (10, 200, 10)).save(buf, format="PNG")
    archive = tmp_path / "d.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("x/01-leaf.png", buf.getvalue())
    ds = TrainingDataset.from_path(archive, DatasetOptions(width=64, height=64))
    assert len(ds) == 1 and ds[0].caption == "leaf" and ds[0].pixels.shape == (3, 64, 64)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as info:
        TrainingDataset.from_path(tmp_path / "empty")
    assert info.value.code == "empty_dataset"
    with pytest.raises(InvalidOptionError):
        DatasetOptions(width=60)
