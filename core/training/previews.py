"""What a run shows and ships: preview grids in ``samples/`` and the release file ``<name>.pt``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from core.hypernetwork.fileformat import load_pt, save_pt
from core.hypernetwork.module import Hypernetwork
from core.models.loading import BaseModel
from core.sampling import SampleRequest, comparison, strength_grid
from core.spec import TrainingSpec
from core.training.callbacks import SampleEvent
from core.training.checkpointing import CHECKPOINT_DIR, check_finite

MAX_COMPARISON_COLUMNS = 6  # checkpoints in the final grid besides the base model


class Previews:
    """Renders grids with the fixed prompts of the spec (or the first training prompt)."""

    def __init__(
        self,
        run_dir: Path,
        model: BaseModel,
        hn: Hypernetwork,
        spec: TrainingSpec,
        default_prompt: str,
        device: torch.device,
    ) -> None:
        self.run_dir = run_dir
        self.model = model
        self.hn = hn
        self.spec = spec
        self.device = device
        t = spec.training
        given = spec.samples.prompts
        self.requests = [
            SampleRequest(
                p.prompt, p.negative_prompt, p.seed, p.steps, p.sampler, p.cfg_scale, p.width, p.height
            )
            for p in given
        ] or [SampleRequest(default_prompt, width=t.width, height=t.height)]

    @contextmanager
    def _rendering(self) -> Iterator[None]:
        """VAE and text encoders on the device while rendering, back where they were afterwards."""
        found = (self.model.vae, self.model.text_encoder, self.model.text_encoder_2)
        parts: list[Any] = [m for m in found if m is not None]  # nn.Modules (opaque to mypy)
        places = [next(m.parameters()).device for m in parts]
        try:
            for m in parts:
                m.to(self.device)
            yield
        finally:
            for m, place in zip(parts, places, strict=True):
                m.to(place)

    def grid(self, step: int) -> SampleEvent:
        """Render ``samples/<name>-<step>.png`` (rows: prompts, columns: strengths); hn must be detached."""
        with self._rendering():
            grid = strength_grid(
                self.model,
                self.requests,
                [self.hn],
                self.spec.samples.strengths,
                title=f"{self.hn.name} step {step}",
            )
        path = grid.save(self.run_dir / "samples" / f"{self.hn.name}-{step}.png")
        return SampleEvent(step, path)

    def comparison(self) -> SampleEvent:
        """Render ``samples/<name>-comparison.png``: the base model, then saved checkpoints."""
        pattern = re.compile(rf"^{re.escape(self.hn.name)}-(\d+)\.pt$")
        found = sorted(
            (int(m[1]), p)
            for p in (self.run_dir / CHECKPOINT_DIR).glob("*.pt")
            if (m := pattern.match(p.name)) is not None
        )
        if len(found) > MAX_COMPARISON_COLUMNS:  # evenly spaced, always ending with the last one
            n = len(found) - 1
            picks = sorted(
                {round(i * n / (MAX_COMPARISON_COLUMNS - 1)) for i in range(MAX_COMPARISON_COLUMNS)}
            )
            found = [found[i] for i in picks]
        columns = [(f"step {step}", [load_pt(path).to(self.device)]) for step, path in found]
        with self._rendering():
            grid = comparison(
                self.model, self.requests, columns, title=f"{self.hn.name}: base model vs checkpoints"
            )
        path = grid.save(self.run_dir / "samples" / f"{self.hn.name}-comparison.png")
        return SampleEvent(None, path)

    def release(self, step: int) -> Path:
        """Write ``<name>.pt`` without dropout layers (the file artists load)."""
        check_finite(self.hn)
        self.hn.step = step
        path = self.run_dir / f"{self.hn.name}.pt"
        save_pt(self.hn, path, release=True)
        return path
