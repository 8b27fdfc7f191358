"""Cost of the hypernetwork attention processor on the SD1.5 UNet: attached vs stock, side by side.

SD1.5's UNet architecture (random weights from the kept config), CPU, batch 1, 256x256
(latents 4x32x32), text states (1, 77, 768), inference forward. The default hypernetwork
([1, 2, 1], widths 768, 320, 640, 1280) acts on every attention layer. After a warmup, each
repetition times both back to back, alternating which goes first. ``ratio`` is the median of
the per-repetition wall-time ratios (robust to a shared machine's drifting load); the seconds
are medians of wall time; ``ratio_cpu`` is the median ratio of the timing thread's CPU time,
which other processes barely disturb. One intra-op thread by default (``--threads N``): then
all the work runs on the timing thread and its CPU time is the whole cost.
Prints one JSON line: {"ratio": ..., "sec_hypernetwork": ..., "sec_stock": ..., "ratio_cpu": ...}.
Target ratio <= 1.25.
"""

from __future__ import annotations

import argparse
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
REPEATS = 9


def _timed(
    unet: UNet2DConditionModel, attachment: Attachment, hyper: bool, inputs: tuple[torch.Tensor, ...]
) -> tuple[float, float]:
    """(wall, thread CPU) seconds of one forward with the hypernetwork processors installed, or stock."""
    if hyper:
        attachment.reattach()
    else:
        attachment.detach()
    latents, timestep, text = inputs
    wall, cpu = time.perf_counter(), time.thread_time()
    with torch.no_grad():
        unet(latents, timestep, encoder_hidden_states=text)
    return time.perf_counter() - wall, time.thread_time() - cpu


def main() -> None:
    """Build the UNet and the network, time both ways interleaved, print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1)")
    torch.set_num_threads(parser.parse_args().threads)
    torch.manual_seed(0)
    config = json.loads((CONFIG_ROOT / "sd15" / "unet" / "config.json").read_text(encoding="utf-8"))
    unet = UNet2DConditionModel.from_config(config).eval().requires_grad_(False)
    network = Hypernetwork.new("bench", HypernetworkOptions.create(), seed=0)  # eval: inference mode
    generator = torch.Generator().manual_seed(0)
    inputs = (
        torch.randn(1, 4, 32, 32, generator=generator),  # 256x256 pixels / 8
        torch.tensor([500]),
        torch.randn(1, 77, 768, generator=generator),  # text states: SD1.5's width 768
    )
    attachment = attach(unet, [network])
    pairs: list[dict[bool, tuple[float, float]]] = []
    for rep in range(WARMUP + REPEATS):
        order = (True, False) if rep % 2 == 0 else (False, True)
        pair = {hyper: _timed(unet, attachment, hyper, inputs) for hyper in order}
        if rep >= WARMUP:
            pairs.append(pair)
    attachment.detach()
    result = {
        "ratio": statistics.median(p[True][0] / p[False][0] for p in pairs),
        "sec_hypernetwork": statistics.median(p[True][0] for p in pairs),
        "sec_stock": statistics.median(p[False][0] for p in pairs),
        "ratio_cpu": statistics.median(p[True][1] / p[False][1] for p in pairs),
    }
    print(json.dumps({key: round(value, 4) for key, value in result.items()}))


if __name__ == "__main__":
    main()
