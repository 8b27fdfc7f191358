"""Sampling on tiny models: samplers, seeds, guidance, hypernetwork strengths, restored state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import HyperforgeError, InvalidOptionError
from core.grids import CELLS_KEY, grid_layout
from core.hypernetwork.module import Hypernetwork
from core.hypernetwork.options import HypernetworkOptions
from core.models import TINY_WIDTHS, BaseModel, load_base_model
from core.sampling import (
    SAMPLERS,
    SampleRequest,
    comparison,
    infotext,
    make_scheduler,
    model_infotext,
    render,
    strength_grid,
)

SIZE = 32


@pytest.fixture(scope="module")
def sd1(tiny_sd1) -> BaseModel:
    torch.manual_seed(0)
    return load_base_model(tiny_sd1)


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl) -> BaseModel:
    torch.manual_seed(0)
    return load_base_model(tiny_sdxl)


def _request(**overrides) -> SampleRequest:
    values = {"prompt": "a red cube", "seed": 3, "steps": 2, "width": SIZE, "height": SIZE}
    values.update(overrides)
    return SampleRequest(**values)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def _strong_hypernetwork(arch: str, name: str = "strong") -> Hypernetwork:
    """A hypernetwork over every tiny width with weights large enough to move the picture."""
    options = HypernetworkOptions.create(layer_structure=(1, 2, 1), enable_sizes=TINY_WIDTHS[arch])
    hn = Hypernetwork.new(name, options, seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in hn.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return hn


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_gives_a_finite_varied_image(sd1: BaseModel, sampler: str) -> None:
    (image,) = render(sd1, [_request(sampler=sampler, steps=3, negative_prompt="blurry")])
    assert image.mode == "RGB" and image.size == (SIZE, SIZE)
    assert _pixels(image).std() > 0  # a NaN decode would have raised; a flat image means no decode


@pytest.mark.parametrize("sampler", ["euler_a", "dpm++_2m_karras"])
def test_sdxl_renders_at_a_non_square_size(sdxl: BaseModel, sampler: str) -> None:
    (image,) = render(sdxl, [_request(sampler=sampler, width=48, height=32)])
    assert image.size == (48, 32)
    assert _pixels(image).std() > 0


def test_v_prediction_model_uses_its_prediction_type(tiny_sd2) -> None:
    model = load_base_model(tiny_sd2)
    assert model.prediction_type == "v_prediction"
    scheduler = make_scheduler("euler", model.noise_scheduler.config, model.prediction_type)
    assert scheduler.config.prediction_type == "v_prediction"
    (image,) = render(model, [_request(sampler="euler")])
    assert _pixels(image).std() > 0


def test_scheduler_classes_and_karras() -> None:
    config = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "clip_sample": True}
    assert make_scheduler("dpm++_2m_karras", config).config.use_karras_sigmas is True
    assert make_scheduler("dpm++_2m", config).config.use_karras_sigmas is False
    assert make_scheduler("ddim", config).config.clip_sample is False
    names = {name: type(make_scheduler(name, config)).__name__ for name in SAMPLERS}
    assert names["euler_a"] == "EulerAncestralDiscreteScheduler"
    assert names["euler"] == "EulerDiscreteScheduler"
    assert names["ddim"] == "DDIMScheduler"


def test_same_seed_same_image_and_other_seed_differs(sd1: BaseModel) -> None:
    a, b, c = render(sd1, [_request(seed=5), _request(seed=5), _request(seed=6)])
    assert np.array_equal(_pixels(a), _pixels(b))
    assert not np.array_equal(_pixels(a), _pixels(c))


def test_render_leaves_the_global_rng_alone(sd1: BaseModel) -> None:
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    render(sd1, [_request(sampler="euler_a")])
    assert torch.equal(torch.rand(4), expected)


def test_cfg_scale_changes_the_image(sd1: BaseModel) -> None:
    one, seven = render(sd1, [_request(cfg_scale=1), _request(cfg_scale=7, negative_prompt="green")])
    assert not np.array_equal(_pixels(one), _pixels(seven))


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_hypernetwork_strength(arch: str, sd1: BaseModel, sdxl: BaseModel) -> None:
    model = sd1 if arch == "sd1" else sdxl
    hn = _strong_hypernetwork(arch)
    request = _request()
    (base,) = render(model, [request])
    (zero,) = render(model, [request], [hn], strength=0.0)
    (full,) = render(model, [request], [hn], strength=1.0)
    assert np.array_equal(_pixels(zero), _pixels(base))
    assert np.abs(_pixels(full) - _pixels(base)).max() > 0


def test_render_restores_processors_strength_and_modes(sd1: BaseModel) -> None:
    hn = _strong_hypernetwork("sd1")
    hn.strength = 0.7
    hn.train()
    sd1.unet.train()
    before = dict(sd1.unet.attn_processors)
    try:
        (half,) = render(sd1, [_request()], [hn], strength=0.5)
        after = dict(sd1.unet.attn_processors)
        assert after.keys() == before.keys()
        assert all(after[k] is before[k] for k in before)
        assert hn.strength == 0.7
        assert hn.training and sd1.unet.training
    finally:
        sd1.unet.eval()
    # Strength is applied in eval mode: 0.7 * 0.5 renders like 0.35 * 1.
    hn.strength = 0.35
    (same,) = render(sd1, [_request()], [hn], strength=1.0)
    assert np.array_equal(_pixels(half), _pixels(same))
    assert hn.training


def test_stacked_hypernetworks_differ_from_one(sd1: BaseModel) -> None:
    a, b = _strong_hypernetwork("sd1", "a"), _strong_hypernetwork("sd1", "b")
    with torch.no_grad():
        for p in b.parameters():
            p.mul_(-1)
    (one,) = render(sd1, [_request()], [a])
    (two,) = render(sd1, [_request()], [a, b])
    assert not np.array_equal(_pixels(one), _pixels(two))


def test_non_finite_result_is_an_error(sd1: BaseModel) -> None:
    hn = _strong_hypernetwork("sd1")
    with torch.no_grad():
        next(hn.parameters()).fill_(float("nan"))
    with pytest.raises(HyperforgeError, match="non-finite") as info:
        render(sd1, [_request()], [hn])
    assert info.value.code == "non_finite_sample"
    assert dict(sd1.unet.attn_processors).keys()  # still usable afterwards
    (image,) = render(sd1, [_request()])
    assert _pixels(image).std() > 0


@pytest.mark.parametrize(
    ("overrides", "option"),
    [
        ({"sampler": "k_lms"}, "sampler"),
        ({"width": 36}, "width"),
        ({"height": 0}, "height"),
        ({"steps": 0}, "steps"),
        ({"seed": -1}, "seed"),
        ({"cfg_scale": 0.5}, "cfg_scale"),
    ],
)
def test_bad_requests_are_refused(overrides: dict, option: str) -> None:
    with pytest.raises(InvalidOptionError) as info:
        _request(**overrides)
    assert info.value.option == option
    if option == "sampler":
        assert all(name in str(info.value) for name in SAMPLERS)


def test_bad_strength_is_refused(sd1: BaseModel) -> None:
    with pytest.raises(InvalidOptionError, match="strength"):
        render(sd1, [_request()], [], strength=float("nan"))


def test_infotext_is_a1111_style() -> None:
    request = SampleRequest("a cat", "blurry, ugly", seed=1, steps=20, sampler="dpm++_2m_karras")
    text = infotext(request, model_name="tiny", model_hash="0123456789", hypernetworks=[("net", 0.5)])
    assert text == (
        "a cat\nNegative prompt: blurry, ugly\n"
        "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x512, "
        "Model hash: 0123456789, Model: tiny, Hypernet: net, Hypernet strength: 0.5"
    )


def test_strength_grid_and_comparison(sd1: BaseModel, tmp_path) -> None:
    hn = _strong_hypernetwork("sd1", "mynet")
    requests = [_request(prompt="a red cube"), _request(prompt="a blue ball")]
    grid = strength_grid(sd1, requests, [hn], [0.0, 1.0], title="mynet step 2")
    assert grid.image.size == grid_layout(2, 2, SIZE, SIZE, title="x").size
    assert grid.cells[0][1] == model_infotext(sd1, requests[0], [hn], 1.0)
    assert "Hypernet" not in grid.cells[0][0]  # strength 0 means no hypernetwork
    assert "Hypernet: mynet, Hypernet strength: 1" in grid.cells[1][1]
    path = grid.save(tmp_path / "grid.png")
    with Image.open(path) as saved:
        assert saved.info["parameters"].startswith(grid.cells[0][0])
        assert saved.info[CELLS_KEY]
    compared = comparison(sd1, requests[:1], [("step 1", [hn]), ("step 2", [hn])])
    assert compared.image.size == grid_layout(1, 3, SIZE, SIZE).size
    assert compared.parameters.endswith('Grid columns: "base model, step 1, step 2"')
