"""Caches computed before training: VAE latents of every sample and text conditioning of every prompt.

Latents: ``once`` samples the VAE posterior once, ``deterministic`` keeps its mean, ``random``
keeps mean and std and draws a fresh sample per use (from the trainer's CPU generator).

Text: templates pick a random line per sample, so the prompts a run can see are the product
(sample x template line). When no tag shuffling or drop-out makes new text, we encode every
distinct prompt of that product once (usually a few hundred: captions x ~10 lines, and lines
without ``[filewords]`` collapse to one prompt), keyed by the prompt's text, so picking a line
per step costs a dict lookup. With shuffling/drop-out the text changes every step and is
encoded per step; the text encoder then stays on the training device. Above
``MAX_CACHED_PROMPTS`` distinct prompts we also encode per step rather than hold them all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from core.data.captions import fill_template
from core.data.dataset import TrainingDataset, collate_items
from core.data.templates import PromptTemplate
from core.models.loading import BaseModel, TextConditioning

MAX_CACHED_PROMPTS = 20_000
_ENCODE_BATCH = 8


@dataclass(frozen=True)
class LatentCache:
    """Per-sample latents [C, h, w] (already times the VAE's scaling factor), on the CPU in fp32."""

    means: list[torch.Tensor]
    stds: list[torch.Tensor] | None  # only for ``random``
    weights: list[torch.Tensor | None]  # [1, h, w] loss weights (use_weight), else None

    def batch(
        self, indices: Sequence[int], generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Latents [B, C, h, w] and weights [B, 1, h, w] (or None) of one batch of sample indices."""
        means = torch.stack([self.means[i] for i in indices])
        if self.stds is not None:
            stds = torch.stack([self.stds[i] for i in indices])
            means = means + stds * torch.randn(means.shape, generator=generator)
        found = [self.weights[i] for i in indices]
        if all(w is None for w in found):
            return means, None
        ones = torch.ones_like(next(w for w in found if w is not None))
        return means, torch.stack([w if w is not None else ones for w in found])


@torch.no_grad()
def encode_latents(
    model: BaseModel,
    dataset: TrainingDataset,
    method: str,
    generator: torch.Generator,
    device: torch.device,
) -> LatentCache:
    """Encode every sample of ``dataset`` once with the model's VAE on ``device``."""
    vae: Any = model.vae  # an nn.Module; diffusers' classes are opaque to mypy
    scale = model.latent_scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    means: list[torch.Tensor] = []
    stds: list[torch.Tensor] = []
    weights: list[torch.Tensor | None] = []
    # One sample at a time: samples may differ in size (buckets) and memory stays flat.
    for index in range(len(dataset)):
        item = dataset[index]
        batch = collate_items([item])
        dist = vae.encode(batch.pixels.to(device, vae.dtype)).latent_dist
        mean = ((dist.mean.float() - shift) * scale).cpu()[0]  # [C, h, w]
        std = (dist.std.float() * scale).cpu()[0]
        if method == "once":
            mean = mean + std * torch.randn(mean.shape, generator=generator)
        means.append(mean)
        stds.append(std)
        weights.append(item.weight)
    return LatentCache(means, stds if method == "random" else None, weights)


def _cat(conds: Sequence[TextConditioning]) -> TextConditioning:
    pooled = [c.pooled for c in conds]
    return TextConditioning(
        torch.cat([c.encoder_hidden_states for c in conds]),
        None if any(p is None for p in pooled) else torch.cat([p for p in pooled if p is not None]),
    )


class TextCache:
    """Text conditioning by prompt: looked up when precomputed, else encoded on the spot."""

    def __init__(self, model: BaseModel, device: torch.device, dtype: torch.dtype) -> None:
        self.model = model
        self.device = device
        self.dtype = dtype
        self.entries: dict[str, TextConditioning] = {}  # prompt -> [1, 77, D] (+ pooled [1, P]) on CPU

    def precompute(self, prompts: Iterable[str]) -> None:
        """Encode each distinct prompt once and keep it on the CPU."""
        todo = sorted(set(prompts) - set(self.entries))
        for start in range(0, len(todo), _ENCODE_BATCH):
            chunk = todo[start : start + _ENCODE_BATCH]
            cond = self.model.encode_prompts(chunk)
            for i, prompt in enumerate(chunk):
                pooled = cond.pooled[i : i + 1].float().cpu() if cond.pooled is not None else None
                self.entries[prompt] = TextConditioning(
                    cond.encoder_hidden_states[i : i + 1].float().cpu(), pooled
                )

    def get(self, prompts: list[str]) -> TextConditioning:
        """Conditioning [B, 77, D] for ``prompts`` on the training device in the UNet's dtype."""
        if all(p in self.entries for p in prompts):
            cond = _cat([self.entries[p] for p in prompts])
        else:
            cond = self.model.encode_prompts(prompts)
        pooled = cond.pooled.to(self.device, self.dtype) if cond.pooled is not None else None
        return TextConditioning(cond.encoder_hidden_states.to(self.device, self.dtype), pooled)


def all_prompts(captions: Sequence[str], template: PromptTemplate, name: str) -> set[str]:
    """Every prompt a run without shuffling or drop-out can draw: each caption in each template line."""
    return {fill_template(line, caption, name) for caption in set(captions) for line in template.lines}
