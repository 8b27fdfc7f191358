"""The denoising objective: noise, timesteps, targets (epsilon or v) and the per-sample loss weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.errors import InvalidOptionError


@dataclass(frozen=True)
class NoiseDraw:
    """The random part of one micro-batch, drawn on the CPU generator so every device sees the same."""

    noise: torch.Tensor  # [B, C, h, w], fp32
    timesteps: torch.Tensor  # [B], int64


def draw_noise(
    shape: tuple[int, ...], num_timesteps: int, generator: torch.Generator, noise_offset: float = 0.0
) -> NoiseDraw:
    """Gaussian noise (plus the optional per-channel offset) and uniform timesteps for a latent batch."""
    noise = torch.randn(shape, generator=generator)
    if noise_offset:
        # A per-(sample, channel) constant shift lets the model learn overall brightness
        # (Guttenberg's noise offset); [B, C, 1, 1] broadcasts over h, w.
        noise = noise + noise_offset * torch.randn((shape[0], shape[1], 1, 1), generator=generator)
    timesteps = torch.randint(0, num_timesteps, (shape[0],), generator=generator)
    return NoiseDraw(noise, timesteps)


def _gather(values: torch.Tensor, timesteps: torch.Tensor, ndim: int) -> torch.Tensor:
    """``values[t]`` reshaped to [B, 1, 1, 1] so it broadcasts over a latent batch."""
    out = values.to(timesteps.device)[timesteps].float()
    return out.reshape(-1, *([1] * (ndim - 1)))


def add_noise(
    latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """Forward diffusion q(x_t | x_0) = sqrt(a) x_0 + sqrt(1 - a) eps, in fp32."""
    a = _gather(alphas_cumprod, timesteps, latents.ndim)
    return a.sqrt() * latents + (1 - a).sqrt() * noise


def target_for(
    prediction_type: str,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """What the UNet must predict: the noise (epsilon) or the velocity v = sqrt(a) eps - sqrt(1 - a) x_0."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        a = _gather(alphas_cumprod, timesteps, latents.ndim)
        return a.sqrt() * noise - (1 - a).sqrt() * latents
    raise InvalidOptionError(f"unsupported prediction type {prediction_type!r}", option="prediction_type")


def min_snr_weights(
    timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float, prediction_type: str
) -> torch.Tensor:
    """Min-SNR-gamma loss weights [B] (Hang et al. 2023), expressed for the model's target."""
    a = alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = a / (1 - a)
    clipped = torch.clamp(snr, max=gamma)
    # For epsilon the x0-space weight min(snr, g) becomes min(snr, g) / snr; v's loss already
    # carries a factor (snr + 1), so it becomes min(snr, g) / (snr + 1).
    return clipped / snr if prediction_type == "epsilon" else clipped / (snr + 1)


def denoising_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    pixel_weights: torch.Tensor | None = None,
    sample_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error in fp32; ``pixel_weights`` [B, 1, h, w] (mean 1), ``sample_weights`` [B]."""
    err = (prediction.float() - target.float()) ** 2  # [B, C, h, w]
    if pixel_weights is not None:
        err = err * pixel_weights.to(err.device, torch.float32)
    per_sample = err.mean(dim=tuple(range(1, err.ndim)))  # [B]
    if sample_weights is not None:
        per_sample = per_sample * sample_weights.to(per_sample.device, torch.float32)
    return per_sample.mean()
