"""Deterministic tiny Stable Diffusion models, structurally faithful, for tests and demos.

Each arch's tiny model keeps the real model's structure at toy widths, from the
configs kept in ``core/models/configs/tiny-*``: the real CLIP tokenizer and
vocabulary with a 2-layer text encoder, a 2-level UNet (32/64 channels, two
layers per block, cross-attention width = the text width) and a 4-level VAE
with 4 latent channels, so 64x64 images give 8x8 latents. SD2's is v-prediction
like SD 2.x 768-v; SDXL's has two text encoders (widths 32 + 48, concatenated to
80) and ``text_time`` added conditioning. The same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from core.errors import InvalidOptionError
from core.models.loading import CONFIG_ROOT
from core.models.single_file import V_PRED_MARKER, to_original
from core.models.tokenizer import tokenizers_for, write_vocab_files

TINY_CONFIGS = {"sd1": "tiny-sd1", "sd2": "tiny-sd2", "sdxl": "tiny-sdxl"}
# The context widths the tiny UNets' attention layers see: the text width (cross-attention) first,
# then the block widths with self-attention. Enable these sizes in a hypernetwork for a tiny model.
# Like the real SDXL (no attention at 320), tiny SDXL's first level (32) has no attention.
TINY_WIDTHS: dict[str, tuple[int, ...]] = {"sd1": (48, 32, 64), "sd2": (48, 32, 64), "sdxl": (80, 64)}
SINGLE_FILE_NAME = "model.safetensors"


def _read(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text(encoding="utf-8")))


def _text_encoder(config_path: Path) -> nn.Module:
    config = CLIPTextConfig.from_json_file(str(config_path))
    if "CLIPTextModelWithProjection" in (config.architectures or []):
        return CLIPTextModelWithProjection(config)
    return CLIPTextModel(config)


def make_tiny_model(
    directory: Path | str, arch: str = "sd1", single_file: bool = False, seed: int = 0
) -> Path:
    """Write a complete tiny diffusers folder (plus ``model.safetensors``, original layout, if asked)."""
    if arch not in TINY_CONFIGS:
        raise InvalidOptionError(
            f"unknown arch {arch!r}; expected one of {sorted(TINY_CONFIGS)}", option="arch"
        )
    directory = Path(directory)
    source = CONFIG_ROOT / TINY_CONFIGS[arch]
    directory.mkdir(parents=True, exist_ok=True)
    text_parts = ["text_encoder", "text_encoder_2"] if arch == "sdxl" else ["text_encoder"]
    # A private RNG stream: the same seed gives the same weights whatever ran before, and the
    # caller's global RNG state is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        modules: dict[str, nn.Module] = {
            "unet": UNet2DConditionModel.from_config(_read(source / "unet" / "config.json")),
            "vae": AutoencoderKL.from_config(_read(source / "vae" / "config.json")),
        }
        for part in text_parts:
            modules[part] = _text_encoder(source / part / "config.json")
    for name, module in modules.items():
        module.save_pretrained(directory / name)  # type: ignore[operator]
    for sub, tokenizer in zip(("tokenizer", "tokenizer_2"), tokenizers_for(arch), strict=True):
        if tokenizer is not None:
            tokenizer.save_pretrained(str(directory / sub))
            write_vocab_files(directory / sub)  # vocab.json/merges.txt too, for older loaders
    (directory / "scheduler").mkdir(exist_ok=True)
    shutil.copyfile(
        source / "scheduler" / "scheduler_config.json", directory / "scheduler" / "scheduler_config.json"
    )
    shutil.copyfile(source / "model_index.json", directory / "model_index.json")
    if single_file:
        write_single_file(directory, arch, modules)
    return directory


def write_single_file(directory: Path, arch: str, modules: dict[str, nn.Module]) -> Path:
    """Write the modules as one original-layout ``model.safetensors`` (as A1111 loads it)."""
    configs = {name: _read(directory / name / "config.json") for name in ("unet", "vae")}
    parts = {name: module.state_dict() for name, module in modules.items()}
    state = to_original(parts, configs, arch)
    scheduler = _read(directory / "scheduler" / "scheduler_config.json")
    if scheduler.get("prediction_type") == "v_prediction":
        state[V_PRED_MARKER] = torch.zeros(0)
    path = directory / SINGLE_FILE_NAME
    save_file(state, str(path), metadata={"format": "pt"})
    return path
