"""Held-out denoising loss: the training objective on images not trained on, with fixed noise.

The same seed draws the same noise and timesteps for every call, so two measurements (say, with
and without a hypernetwork) differ only by the network. Used by the "it learns" test and
available to callers that want a validation figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from core.data.dataset import TrainingDataset
from core.hypernetwork.module import Hypernetwork
from core.inject import attach
from core.models.loading import BaseModel
from core.training import diffusion
from core.training.latents import encode_latents


def _pixels(model: BaseModel, latents: torch.Tensor) -> tuple[int, int]:
    """(height, width) in pixels of a latent batch [B, C, h, w]."""
    return latents.shape[2] * model.vae_scale_factor, latents.shape[3] * model.vae_scale_factor


@torch.no_grad()
def heldout_loss(
    model: BaseModel,
    dataset: TrainingDataset,
    prompts: Sequence[str],
    stack: Sequence[Hypernetwork] = (),
    *,
    seed: int = 0,
    draws: int = 8,
) -> float:
    """Mean denoising loss over ``draws`` fixed (noise, timestep) pairs per sample of ``dataset``."""
    unet: Any = model.unet  # an nn.Module; diffusers' classes are opaque to mypy
    device = next(unet.parameters()).device
    scheduler: Any = model.noise_scheduler
    alphas = scheduler.alphas_cumprod.to(device)
    steps = int(scheduler.config.num_train_timesteps)
    cache = encode_latents(model, dataset, "deterministic", torch.Generator().manual_seed(seed), device)
    generator = torch.Generator().manual_seed(seed)
    modes = [hn.training for hn in stack]
    total, count = 0.0, 0
    try:
        for hn in stack:
            hn.eval()  # no dropout; strength applies
        with attach(unet, list(stack)):
            for index in range(len(dataset)):
                cond = model.encode_prompts([prompts[index]])
                latents, _ = cache.batch([index] * draws, generator)  # [draws, C, h, w]
                draw = diffusion.draw_noise(tuple(latents.shape), steps, generator)
                latents, noise, t = latents.to(device), draw.noise.to(device), draw.timesteps.to(device)
                noisy = diffusion.add_noise(latents, noise, t, alphas)
                target = diffusion.target_for(model.prediction_type, latents, noise, t, alphas)
                hidden = cond.encoder_hidden_states.expand(draws, -1, -1)
                pooled = cond.pooled.expand(draws, -1) if cond.pooled is not None else None
                kwargs = model.unet_kwargs(type(cond)(hidden, pooled), *_pixels(model, latents))
                pred = unet(noisy.to(unet.dtype), t, **kwargs).sample
                total += float(diffusion.denoising_loss(pred, target)) * draws
                count += draws
    finally:
        for hn, mode in zip(stack, modes, strict=True):
            hn.train(mode)
    return total / count
