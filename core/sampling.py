"""Render prompts with hypernetworks attached: the samplers artists know and a small denoising loop.

Samplers are diffusers schedulers built from the base model's own scheduler config, so the
model's ``prediction_type`` (epsilon or v_prediction) and beta schedule carry over. Every
random draw (the initial latents and the ancestral noise) comes from a CPU
``torch.Generator`` seeded per request, so a seed gives the same noise on CPU and on CUDA
and rendering never touches the global RNG the trainer relies on. Requests are rendered one
at a time, so an image never depends on what else was in the call.

Strength: ``render(..., stack, strength)`` applies each network at ``network.strength *
strength`` (the CLI's ``FILE:0.8`` and a grid column's value multiply); a network whose product
is 0 is left out, so strength 0 renders exactly the base model. Strengths, train/eval modes and
the UNet's attention processors are restored afterwards, even on error.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)
from PIL import Image

from core.errors import HyperforgeError, InvalidOptionError
from core.grids import (
    Grid,
    checkpoint_grid,
    comparison_grid,
    format_parameters,
    grid_parameters,
    quote,
    strength_label,
)
from core.inject import attach

if TYPE_CHECKING:
    from core.hypernetwork.module import Hypernetwork
    from core.models import BaseModel

# Our sampler names -> (diffusers scheduler class, config overrides, A1111's display name).
# DDIM must not clip x0 to [-1, 1]: that bound is for pixels, latents are not bounded.
SAMPLERS: Final[Mapping[str, tuple[type[Any], Mapping[str, Any], str]]] = {
    "euler_a": (EulerAncestralDiscreteScheduler, {}, "Euler a"),
    "euler": (EulerDiscreteScheduler, {"use_karras_sigmas": False}, "Euler"),
    "dpm++_2m": (DPMSolverMultistepScheduler, {"use_karras_sigmas": False}, "DPM++ 2M"),
    "dpm++_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}, "DPM++ 2M Karras"),
    "ddim": (DDIMScheduler, {"clip_sample": False, "thresholding": False}, "DDIM"),
}
MAX_STEPS: Final = 150  # A1111's slider maximum
MAX_SIDE: Final = 4096
MAX_CFG: Final = 30.0
MAX_SEED: Final = 2**32 - 1


def _fail(option: str, message: str) -> InvalidOptionError:
    return InvalidOptionError(f"{option}: {message}", option=option)


def check_sampler(name: str) -> str:
    """Return ``name`` if it is a known sampler, else raise an error naming the allowed ones."""
    if name not in SAMPLERS:
        raise _fail("sampler", f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")
    return name


def sampler_label(name: str) -> str:
    """A1111's display name of a sampler ("Euler a", "DPM++ 2M Karras", ...)."""
    return SAMPLERS[check_sampler(name)][2]


def make_scheduler(name: str, config: Mapping[str, Any], prediction_type: str | None = None) -> Any:
    """A fresh diffusers scheduler for sampler ``name`` built from a model's scheduler config."""
    cls, overrides, _ = SAMPLERS[check_sampler(name)]
    extra = dict(overrides)
    if prediction_type is not None:
        extra["prediction_type"] = prediction_type
    return cls.from_config(dict(config), **extra)


def check_strength(value: float, option: str = "strength") -> float:
    """Return ``value`` as a float if it is a finite, non-negative strength."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(option, f"must be a finite number, got {value!r}")
    if value < 0:
        raise _fail(option, f"must be >= 0, got {value}")
    return float(value)


def _check_int(option: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(option, f"must be an integer in {low}..{high}, got {value!r}")
    return value


@dataclass(frozen=True)
class SampleRequest:
    """One image to render: prompt, seed and the sampler settings A1111 shows."""

    prompt: str
    negative_prompt: str = ""
    seed: int = 1
    steps: int = 20
    sampler: str = "euler_a"
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512

    def __post_init__(self) -> None:
        check_sampler(self.sampler)
        for option, side in (("width", self.width), ("height", self.height)):
            if _check_int(option, side, 8, MAX_SIDE) % 8:
                raise _fail(option, f"must be a multiple of 8, got {side}")
        _check_int("steps", self.steps, 1, MAX_STEPS)
        _check_int("seed", self.seed, 0, MAX_SEED)
        cfg = self.cfg_scale
        if isinstance(cfg, bool) or not isinstance(cfg, int | float) or not 1.0 <= cfg <= MAX_CFG:
            raise _fail("cfg_scale", f"must be a number in 1..{MAX_CFG:g}, got {cfg!r}")


def infotext(
    request: SampleRequest,
    *,
    model_name: str | None = None,
    model_hash: str | None = None,
    hypernetworks: Sequence[tuple[str, float]] = (),
) -> str:
    """The A1111 ``parameters`` text of one image: prompt, negative prompt, settings line."""
    fields = [
        ("Steps", str(request.steps)),
        ("Sampler", sampler_label(request.sampler)),
        ("CFG scale", f"{request.cfg_scale:g}"),
        ("Seed", str(request.seed)),
        ("Size", f"{request.width}x{request.height}"),
    ]
    if model_hash:
        fields.append(("Model hash", model_hash))
    if model_name:
        fields.append(("Model", quote(model_name)))
    # A1111 writes one "Hypernet"/"Hypernet strength" pair; further networks of a stack are numbered.
    for index, (name, strength) in enumerate(hypernetworks, start=1):
        key = "Hypernet" if index == 1 else f"Hypernet {index}"
        fields.append((key, quote(name)))
        fields.append((f"{key} strength", f"{strength:g}"))
    return format_parameters(request.prompt, request.negative_prompt, fields)


def model_infotext(
    model: BaseModel, request: SampleRequest, stack: Sequence[Hypernetwork] = (), strength: float = 1.0
) -> str:
    """``infotext`` for ``render(model, [request], stack, strength)``'s image."""
    active = [(hn.name, float(hn.strength) * strength) for hn in stack]
    return infotext(
        request,
        model_name=model.name,
        model_hash=model.sha256_short,
        hypernetworks=[(n, s) for n, s in active if s != 0],
    )


@contextmanager
def _applied(model: BaseModel, stack: Sequence[Hypernetwork], strength: float) -> Iterator[None]:
    """Attach ``stack`` scaled by ``strength`` in eval mode; restore strengths, modes and processors."""
    unet: Any = model.unet  # diffusers' nn.Module mixins are untyped
    saved = [(hn, hn.strength, hn.training) for hn in stack]
    unet_training = unet.training
    try:
        unet.eval()
        for hn, base, _ in saved:
            hn.strength = base * strength
            hn.eval()  # strength applies only in eval mode; it also turns dropout off
        # A zero-strength network adds exactly nothing: leave it out. Attaching even an empty stack
        # replaces whatever the UNet carries (the trainer's own attachment), so only ``stack`` applies.
        with attach(unet, [hn for hn in stack if hn.strength != 0]):
            yield
    finally:
        for hn, base, training in saved:
            hn.strength = base
            hn.train(training)
        unet.train(unet_training)


def _moved(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """``value`` (a tensor, or a dict/list/tuple of them) on ``device``; float tensors in ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, dtype) if value.is_floating_point() else value.to(device)
    if isinstance(value, Mapping):
        return {k: _moved(v, device, dtype) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_moved(v, device, dtype) for v in value)
    return value


def _denoise(model: BaseModel, request: SampleRequest) -> torch.Tensor:
    """Run one request's sampling loop; returns float32 latents (1, C, h, w) on the UNet's device."""
    unet: Any = model.unet
    noise_scheduler: Any = model.noise_scheduler
    device, dtype = unet.device, unet.dtype
    scale = model.vae_scale_factor
    for option, side in (("width", request.width), ("height", request.height)):
        if side % scale:
            raise _fail(option, f"must be a multiple of {scale} for this model, got {side}")
    scheduler = make_scheduler(request.sampler, noise_scheduler.config, model.prediction_type)
    scheduler.set_timesteps(request.steps, device=device)
    generator = torch.Generator("cpu").manual_seed(request.seed)
    shape = (1, unet.config.in_channels, request.height // scale, request.width // scale)
    # Noise drawn on the CPU in float32 so a seed means the same picture on every device.
    latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
    latents = latents * scheduler.init_noise_sigma
    guided = request.cfg_scale != 1
    prompts = [request.negative_prompt, request.prompt] if guided else [request.prompt]
    cond = model.encode_prompts(prompts)
    kwargs = _moved(model.unet_kwargs(cond, request.height, request.width), device, dtype)
    for t in scheduler.timesteps:
        batch = torch.cat([latents] * len(prompts))  # (B, C, h, w), B = 2 with guidance
        batch = scheduler.scale_model_input(batch, t)
        out = unet(batch.to(dtype), t, **kwargs)
        pred = (out.sample if hasattr(out, "sample") else out[0]).float()
        if guided:
            uncond, text = pred.chunk(2)
            pred = uncond + request.cfg_scale * (text - uncond)
        latents = scheduler.step(pred, t, latents, generator=generator).prev_sample
    return latents


def _decode(model: BaseModel, latents: torch.Tensor) -> torch.Tensor:
    """VAE-decode latents to float32 pixels (1, 3, H, W) in [-1, 1] (unclamped)."""
    vae: Any = model.vae
    config = vae.config
    latents = latents / config.scaling_factor
    if getattr(config, "shift_factor", None) is not None:
        latents = latents + config.shift_factor
    # The SDXL VAE overflows in fp16 (force_upcast in its config): decode that one in fp32.
    upcast = vae.dtype == torch.float16 and bool(getattr(config, "force_upcast", False))
    if upcast:
        vae.to(torch.float32)
    try:
        dtype = torch.float32 if upcast else vae.dtype
        return vae.decode(latents.to(vae.device, dtype)).sample.float()
    finally:
        if upcast:
            vae.to(torch.float16)


def _to_image(pixels: torch.Tensor) -> Image.Image:
    """Pixels (1, 3, H, W) in [-1, 1] -> an RGB PIL image."""
    array = ((pixels[0] / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(np.ascontiguousarray(array.permute(1, 2, 0).cpu().numpy()))


def render(
    model: BaseModel,
    requests: Sequence[SampleRequest],
    stack: Sequence[Hypernetwork] = (),
    strength: float = 1.0,
) -> list[Image.Image]:
    """Render each request with ``stack`` attached, every network at its own strength times ``strength``."""
    # The networks must already be on the UNet's device (the trainer's are; the CLI moves them).
    strength = check_strength(strength)
    images = []
    with torch.no_grad(), _applied(model, stack, strength):
        for request in requests:
            pixels = _decode(model, _denoise(model, request))
            if not torch.isfinite(pixels).all():
                raise HyperforgeError(
                    f"sampling {request.prompt!r} (seed {request.seed}) produced non-finite values",
                    code="non_finite_sample",
                )
            images.append(_to_image(pixels))
    return images


def strength_grid(
    model: BaseModel,
    requests: Sequence[SampleRequest],
    stack: Sequence[Hypernetwork],
    strengths: Sequence[float],
    title: str = "",
) -> Grid:
    """Render a checkpoint grid: rows ``requests``, columns ``stack`` scaled by each of ``strengths``."""
    columns = [render(model, requests, stack, s) for s in strengths]
    images = [[column[r] for column in columns] for r in range(len(requests))]
    cells = tuple(tuple(model_infotext(model, q, stack, s) for s in strengths) for q in requests)
    prompts = [q.prompt for q in requests]
    labels = [strength_label(s) for s in strengths]
    return Grid(
        image=checkpoint_grid(images, prompts, strengths, title),
        parameters=grid_parameters(cells, prompts, labels),
        cells=cells,
    )


def comparison(
    model: BaseModel,
    requests: Sequence[SampleRequest],
    checkpoints: Sequence[tuple[str, Sequence[Hypernetwork]]],
    strength: float = 1.0,
    title: str = "",
    base_label: str = "base model",
) -> Grid:
    """Render a comparison grid: rows ``requests``, columns the base model then each labelled stack."""
    columns: list[tuple[str, Sequence[Hypernetwork]]] = [(base_label, ()), *checkpoints]
    rendered = [render(model, requests, hns, strength) for _, hns in columns]
    images = [[column[r] for column in rendered] for r in range(len(requests))]
    cells = tuple(tuple(model_infotext(model, q, hns, strength) for _, hns in columns) for q in requests)
    prompts = [q.prompt for q in requests]
    labels = [label for label, _ in columns]
    return Grid(
        image=comparison_grid(images, prompts, labels, title),
        parameters=grid_parameters(cells, prompts, labels),
        cells=cells,
    )
