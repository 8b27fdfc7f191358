"""Cost of the hypernetwork attention processor on the SD1.5 UNet: attached vs stock, side by side.

SD1.5's UNet architecture (random weights from the kept config), CPU, batch 1, 256x256
(latents 4x32x32), text states (1, 77, 768), inference forward. The default hypernetwork
([1, 2, 1], widths 768, 320, 640, 1280) acts on every attention layer. Repetitions
alternate between the two (and which goes first) after a warmup; we report medians.
Prints one JSON line: {"ratio": ..., "sec_hypernetwork": ..., "sec_stock": ...}. Target ratio <= 1.25.
"""

from __future__ import annotations

import json
import statistics
import time

import torch
from diffusers import UNet2DConditionModel

from core.hypernetwork.module import Hypernetwork
from core.hypernetwork.options import HypernetworkOptions
from core.inject import Attachment, attach
from core.models.loading import CONFIG_ROOT

WARMUP = 2
REPEATS = 7


def _timed(
    unet: UNet2DConditionModel, attachment: Attachment, hyper: bool, inputs: tuple[torch.Tensor, ...]
) -> float:
    """Seconds for one forward with the hypernetwork processors installed (or the stock ones)."""
    if hyper:
        attachment.reattach()
    else:
        attachment.detach()
    latents, timestep, text = inputs
    started = time.perf_counter()
    with torch.no_grad():
        unet(latents, timestep, encoder_hidden_states=text)
    return time.perf_counter() - started


def main() -> None:
    """Build the UNet and the network, time both ways interleaved, print the JSON line."""
    torch.manual_seed(0)
    config = json.loads((CONFIG_ROOT / "sd15" / "unet" / "config.json").read_text(encoding="utf-8"))
    unet = UNet2DConditionModel.from_config(config).eval().requires_grad_(False)
    network = Hypernetwork.new("bench", HypernetworkOptions.create(), seed=0)  # eval: inference mode
    generator = torch.Generator().manual_seed(0)
    inputs = (
        torch.randn(1, 4, 32, 32, generator=generator),  # 256x256 pixels / 8
        torch.tensor([500]),
        torch.randn(1, 77, 768, generator=generator),
    )
    attachment = attach(unet, [network])
    times: dict[bool, list[float]] = {True: [], False: []}
    for rep in range(WARMUP + REPEATS):
        order = (True, False) if rep % 2 == 0 else (False, True)
        for hyper in order:
            seconds = _timed(unet, attachment, hyper, inputs)
            if rep >= WARMUP:
                times[hyper].append(seconds)
    attachment.detach()
    hyper, stock = statistics.median(times[True]), statistics.median(times[False])
    print(
        json.dumps(
            {
                "ratio": round(hyper / stock, 4),
                "sec_hypernetwork": round(hyper, 4),
                "sec_stock": round(stock, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
