"""Aspect-ratio buckets and the resumable bucket batch sampler."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.data.buckets import Bucket, cover_crop_box, make_buckets, nearest_bucket
from core.data.sampler import BucketBatchSampler
from core.errors import InvalidOptionError

sides = st.integers(min_value=4, max_value=16).map(lambda n: n * 64)
image_sides = st.integers(min_value=64, max_value=4096)


@settings(max_examples=60, deadline=None)
@given(w=sides, h=sides)
def test_buckets_respect_area_steps_and_bounds(w: int, h: int) -> None:
    buckets = make_buckets(w, h)
    lo, hi = max(64, min(w, h) // 2 // 64 * 64), max(w, h) * 2
    assert Bucket(w, h) in buckets  # the training size itself is always a bucket
    for b in buckets:
        assert b.width % 64 == 0 and b.height % 64 == 0
        assert b.area <= w * h
        assert lo <= b.width <= hi and lo <= b.height <= hi
    # The set is closed under transposition: portrait and landscape are served alike.
    assert {Bucket(b.height, b.width) for b in buckets} == set(buckets)


@settings(max_examples=100, deadline=None)
@given(w=sides, h=sides, iw=image_sides, ih=image_sides)
def test_nearest_bucket_has_the_nearest_aspect(w: int, h: int, iw: int, ih: int) -> None:
    buckets = make_buckets(w, h)
    chosen = nearest_bucket(iw, ih, buckets)
    target = math.log(iw / ih)
    best = min(abs(b.log_aspect - target) for b in buckets)
    assert abs(chosen.log_aspect - target) == pytest.approx(best)
    # The transposed image is exactly as well served (the bucket set is symmetric).
    flipped = nearest_bucket(ih, iw, buckets)
    assert abs(flipped.log_aspect + target) == pytest.approx(best)


def test_exact_aspect_goes_to_its_bucket() -> None:
    buckets = make_buckets(512, 512)
    assert nearest_bucket(1000, 1000, buckets) == Bucket(512, 512)
    assert nearest_bucket(1536, 1024, buckets) == Bucket(640, 384)  # 1.67 is nearer 1.5 than 1.29
    assert nearest_bucket(1024, 1536, buckets) == Bucket(384, 640)
    assert nearest_bucket(64, 4096, buckets).width == 256  # extreme portrait: the tallest bucket


def test_bucket_option_errors() -> None:
    with pytest.raises(InvalidOptionError):
        make_buckets(500, 512)
    with pytest.raises(InvalidOptionError):
        make_buckets(512, 512, min_side=100)
    with pytest.raises(InvalidOptionError):
        make_buckets(128, 128, min_side=256, max_side=512)
    assert make_buckets(64, 64) == (Bucket(64, 64),)


@pytest.mark.parametrize(
    ("src", "dst", "box"),
    [
        ((200, 100), (100, 100), (50.0, 0.0, 150.0, 100.0)),
        ((100, 200), (100, 100), (0.0, 50.0, 100.0, 150.0)),
        ((100, 100), (100, 50), (0.0, 25.0, 100.0, 75.0)),
        ((64, 64), (64, 64), (0.0, 0.0, 64.0, 64.0)),
    ],
)
def test_cover_crop_box_is_centred(
    src: tuple[int, int], dst: tuple[int, int], box: tuple[float, ...]
) -> None:
    assert cover_crop_box(*src, *dst) == pytest.approx(box)


def make_sampler(batch_size: int = 3, seed: int = 5) -> BucketBatchSampler:
    keys = ["a"] * 7 + ["b"] * 4 + ["c"] * 2
    return BucketBatchSampler(keys, batch_size, seed=seed)


def test_sampler_batches_stay_in_one_bucket_and_cover_each_index_once() -> None:
    keys = ["a"] * 7 + ["b"] * 4 + ["c"] * 2
    sampler = make_sampler()
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3 + 2 + 1
    assert sorted(i for b in batches for i in b) == list(range(13))
    for b in batches:
        assert len({keys[i] for i in b}) == 1 and 1 <= len(b) <= 3
    dropped = BucketBatchSampler(keys, 3, seed=5, drop_last=True)
    assert all(len(b) == 3 for b in dropped) and len(dropped) == 3


def test_sampler_is_deterministic_per_seed_and_epoch() -> None:
    a, b = make_sampler(seed=1), make_sampler(seed=1)
    assert [list(a) for _ in range(3)] == [list(b) for _ in range(3)]
    fresh = make_sampler(seed=1)
    assert fresh.epoch_batches(0) != fresh.epoch_batches(1)
    assert make_sampler(seed=1).epoch_batches(0) != make_sampler(seed=2).epoch_batches(0)


def test_sampler_resumes_exactly_where_it_stopped() -> None:
    reference = make_sampler()
    expected = [batch for _ in range(3) for batch in reference]  # three whole epochs

    run = make_sampler()
    seen: list[list[int]] = []
    it = iter(run)
    for _ in range(4):
        seen.append(next(it))
    state = run.state_dict()
    assert state == {"seed": 5, "epoch": 0, "position": 4}

    resumed = make_sampler(seed=999)  # the seed comes back from the state
    resumed.load_state_dict(state)
    for _ in range(3):
        seen.extend(resumed)
        if len(seen) >= len(expected):
            break
    assert seen[: len(expected)] == expected


def test_sampler_resumes_after_the_last_batch_of_an_epoch() -> None:
    run = make_sampler()
    it = iter(run)
    for _ in range(len(run)):
        next(it)
    state = run.state_dict()  # the generator is still suspended inside epoch 0
    assert state["epoch"] == 0 and state["position"] == len(run)
    resumed = make_sampler()
    resumed.load_state_dict(state)
    assert list(resumed) == make_sampler().epoch_batches(1)


def test_sampler_rejects_bad_input() -> None:
    with pytest.raises(InvalidOptionError):
        BucketBatchSampler([], 1)
    with pytest.raises(InvalidOptionError):
        BucketBatchSampler(["a"], 0)
    s = make_sampler()
    with pytest.raises(InvalidOptionError):
        s.load_state_dict({"seed": 0, "epoch": 0, "position": 99})
