"""The run directory's logs: ``loss.csv``, ``loss.png`` (drawn with PIL) and ``training_config.json``."""

from __future__ import annotations

import csv
import json
import math
import platform
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

LOSS_COLUMNS = ("step", "epoch", "epoch_step", "loss", "learn_rate")
CONFIG_FORMAT = "hyperforge.training_config"
CONFIG_VERSION = 1


@dataclass(frozen=True)
class LossRow:
    """One line of ``loss.csv``."""

    step: int
    epoch: int
    epoch_step: int
    loss: float
    learn_rate: float


class LossLog:
    """Appends rows to ``loss.csv``; on resume, drops rows after the step the run resumes from."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        self.rows: list[LossRow] = read_loss_csv(path) if path.exists() and resume_step is not None else []
        # Rows written after the last checkpoint belong to steps the resumed run will redo.
        self.rows = [r for r in self.rows if resume_step is not None and r.step <= resume_step]
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(LOSS_COLUMNS)
            writer.writerows(_cells(r) for r in self.rows)

    def append(self, row: LossRow) -> None:
        """Record one step (written through at once, so a crash loses nothing)."""
        self.rows.append(row)
        with self.path.open("a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow(_cells(row))


def _cells(row: LossRow) -> list[str]:
    return [str(row.step), str(row.epoch), str(row.epoch_step), f"{row.loss:.7g}", f"{row.learn_rate:.7g}"]


def read_loss_csv(path: Path) -> list[LossRow]:
    """Read ``loss.csv`` back."""
    with path.open(newline="", encoding="utf-8") as f:
        return [
            LossRow(
                int(r["step"]),
                int(r["epoch"]),
                int(r["epoch_step"]),
                float(r["loss"]),
                float(r["learn_rate"]),
            )
            for r in csv.DictReader(f)
        ]


def _moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def draw_loss_png(rows: list[LossRow], path: Path, size: tuple[int, int] = (800, 400)) -> None:
    """Plot loss per step (dots) and its moving average (line) into a PNG."""
    width, height = size
    left, right, top, bottom = 70, 20, 30, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.rectangle((left, top, width - right, height - bottom), outline="black")
    points = [(r.step, r.loss) for r in rows if math.isfinite(r.loss)]
    if not points:
        draw.text((left + 10, top + 10), "no steps yet", fill="black", font=font)
        image.save(path)
        return
    steps, losses = [p[0] for p in points], [p[1] for p in points]
    lo, hi = min(losses), max(losses)
    hi = hi if hi > lo else lo + 1e-6  # a constant loss still needs a non-empty range
    first, last = steps[0], max(steps[-1], steps[0] + 1)

    def xy(step: float, loss: float) -> tuple[float, float]:
        x = left + (step - first) / (last - first) * (width - left - right)
        y = height - bottom - (loss - lo) / (hi - lo) * (height - top - bottom)
        return x, y

    for s, v in points:
        x, y = xy(s, v)
        draw.point((x, y), fill=(150, 170, 220))
    smooth = _moving_average(losses, max(1, len(losses) // 50))
    draw.line([xy(s, v) for s, v in zip(steps, smooth, strict=True)], fill=(20, 60, 170), width=2)
    draw.text((5, top - 5), f"{hi:.4g}", fill="black", font=font)
    draw.text((5, height - bottom - 10), f"{lo:.4g}", fill="black", font=font)
    draw.text((left, height - bottom + 8), f"step {first}", fill="black", font=font)
    draw.text((width - right - 80, height - bottom + 8), f"step {steps[-1]}", fill="black", font=font)
    draw.text(
        (left, 8), f"loss (mean of last {len(losses) // 50 or 1} steps in dark)", fill="black", font=font
    )
    image.save(path)


def package_versions() -> dict[str, str]:
    """Versions that decide what a run computes (recorded in training_config.json)."""
    found = {"python": platform.python_version()}
    for name in ("hyperforge", "torch", "diffusers", "transformers", "safetensors", "numpy", "pillow"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def write_training_config(path: Path, spec: dict[str, Any], **sections: Any) -> None:
    """Write ``training_config.json``: the resolved spec plus runtime, versions, model and dataset facts."""
    document = {"format": CONFIG_FORMAT, "version": CONFIG_VERSION, "spec": spec, **sections}
    document.setdefault("versions", package_versions())
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)  # never leave a half-written config behind


def read_training_config(path: Path) -> dict[str, Any]:
    """Read ``training_config.json`` back."""
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document
