"""Seconds per training step on the SD1.5 UNet, beside a plain forward and a gradient-checkpointed step.

SD1.5's UNet architecture (random weights from the kept config), CPU, batch 1, 256x256
(latents 4x32x32), text states (1, 77, 768); the default hypernetwork ([1, 2, 1], relu, widths
768, 320, 640, 1280) trains with AdamW exactly as ``core.training.trainer`` does: noise, a random
timestep, the UNet with the network attached, MSE on the noise, backward, optimizer step.
The UNet is frozen (``requires_grad=False``), so backward computes only the activations'
gradients and the network's: about 2.2x a forward by FLOP count, while checkpointing (what A1111
always does) adds a second forward. Rounds interleave the three measurements so a busy machine
slows them alike; medians are reported. Ends with one JSON line:
{"sec_per_step", "sec_per_forward", "sec_per_step_checkpointed", "step_over_forward",
"checkpointed_over_step", "peak_rss_mb"}. Targets: step <= 2.7x forward, checkpointed >= 1.25x step.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from collections.abc import Callable

import torch
from diffusers import UNet2DConditionModel

from core.hypernetwork.module import Hypernetwork
from core.hypernetwork.options import HypernetworkOptions
from core.inject import attach
from core.models.loading import CONFIG_ROOT
from core.training import diffusion
from core.training.config import make_optimizer

WARMUP = 2
REPEATS = 5


def main() -> None:
    """Build the UNet and network, time forward / step / checkpointed step interleaved, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # on a shared machine 1 thread avoids stalls at every sync
    torch.manual_seed(0)
    config = json.loads((CONFIG_ROOT / "sd15" / "unet" / "config.json").read_text(encoding="utf-8"))
    unet = UNet2DConditionModel.from_config(config).eval().requires_grad_(False)
    options = HypernetworkOptions.create(activation_func="relu")  # [1, 2, 1] on 768/320/640/1280
    network = Hypernetwork.new("bench", options, seed=0).train()
    params = network.parameters_in_a1111_order()
    optimizer = make_optimizer("AdamW", params, 5e-6)
    alphas = torch.linspace(
        0.9991, 0.0047, 1000
    )  # SD's alphas_cumprod, end points; the shape does not matter
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 32, 32, generator=generator)  # 256x256 pixels / 8
    text = torch.randn(1, 77, 768, generator=generator)
    attachment = attach(unet, [network])

    def forward() -> None:
        attachment.detach()  # the plain UNet, as inference runs it
        with torch.no_grad():
            unet(latents, torch.tensor([500]), encoder_hidden_states=text)
        attachment.reattach()

    def step() -> None:
        draw = diffusion.draw_noise(tuple(latents.shape), 1000, generator)
        noisy = diffusion.add_noise(latents, draw.noise, draw.timesteps, alphas)
        pred = unet(noisy, draw.timesteps, encoder_hidden_states=text).sample
        diffusion.denoising_loss(pred, draw.noise).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def checkpointed() -> None:
        unet.enable_gradient_checkpointing()
        try:
            step()
        finally:
            unet.disable_gradient_checkpointing()

    cases: dict[str, Callable[[], None]] = {"forward": forward, "step": step, "checkpointed": checkpointed}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for rep in range(WARMUP + REPEATS):
        names = list(cases) if rep % 2 == 0 else list(reversed(cases))
        for name in names:
            started = time.perf_counter()
            cases[name]()
            if rep >= WARMUP:
                times[name].append(time.perf_counter() - started)
    attachment.detach()
    fwd, stp, ckpt = (statistics.median(times[n]) for n in ("forward", "step", "checkpointed"))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(
        json.dumps(
            {
                "sec_per_step": round(stp, 4),
                "sec_per_forward": round(fwd, 4),
                "sec_per_step_checkpointed": round(ckpt, 4),
                "step_over_forward": round(stp / fwd, 3),
                "checkpointed_over_step": round(ckpt / stp, 3),
                "peak_rss_mb": round(peak_mb, 1),
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
