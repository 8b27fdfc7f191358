"""Load a Stable Diffusion base model offline: a diffusers folder or a single-file checkpoint.

Single files use the configs kept in ``core/models/configs`` (never the hub); the
weights are checked against each candidate config of the detected arch (the real
model's, then the tiny test model's) and loaded into modules built on the meta
device, so a real checkpoint is held in memory once. Every module is frozen
(eval, ``requires_grad=False``): hypernetwork training never changes them.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from core.errors import InvalidOptionError, ModelLoadError
from core.hashing import short_hash
from core.models.single_file import UNET_PREFIX, V_PRED_MARKER, detect_arch, from_original
from core.models.tokenizer import tokenizers_for

Arch = Literal["sd1", "sd2", "sdxl"]
PredictionType = Literal["epsilon", "v_prediction"]
ARCHES: tuple[str, ...] = ("sd1", "sd2", "sdxl")
CONFIG_ROOT = Path(__file__).parent / "configs"
# Candidate configs per arch for single files: the real model first, then the tiny test model.
CONFIG_CANDIDATES: dict[str, tuple[str, ...]] = {
    "sd1": ("sd15", "tiny-sd1"),
    "sd2": ("sd2", "tiny-sd2"),
    "sdxl": ("sdxl", "tiny-sdxl"),
}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True, eq=False)
class TextConditioning:
    """Text conditioning for the UNet: hidden states [B, 77, D] and, for SDXL, pooled embeddings [B, P]."""

    encoder_hidden_states: torch.Tensor
    pooled: torch.Tensor | None = None


@dataclass(frozen=True, eq=False)
class BaseModel:
    """A loaded base model: frozen modules, tokenizers, the training noise schedule and identity."""

    arch: Arch
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection | None
    tokenizer: CLIPTokenizer
    tokenizer_2: CLIPTokenizer | None
    noise_scheduler: DDPMScheduler
    prediction_type: PredictionType
    name: str
    sha256_short: str
    source: Path

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (8 for every SD model and the tiny ones)."""
        return int(2 ** (len(cast(Any, self.vae).config["block_out_channels"]) - 1))

    @property
    def latent_scaling_factor(self) -> float:
        """Factor applied to VAE latents before the UNet (0.18215 SD1/SD2, 0.13025 SDXL)."""
        return float(cast(Any, self.vae).config["scaling_factor"])

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> TextConditioning:
        """Encode prompts as this arch conditions its UNet (no gradients; padded to 77 tokens)."""
        if self.arch != "sdxl":
            # SD1: CLIP ViT-L's last layer; SD2: OpenCLIP ViT-H's penultimate layer, which is the last
            # of the 23 kept in diffusers. Both after the final LayerNorm: [B, 77, 768 | 1024].
            return TextConditioning(self._hidden_states(self.tokenizer, self.text_encoder, prompts)[0])
        assert self.tokenizer_2 is not None and self.text_encoder_2 is not None
        # SDXL: penultimate layers (no final LayerNorm) of both encoders, concatenated:
        # [B, 77, 768] + [B, 77, 1280] -> [B, 77, 2048]; pooled = projected EOS of the second [B, 1280].
        first = self._hidden_states(self.tokenizer, self.text_encoder, prompts, penultimate=True)
        second = self._hidden_states(self.tokenizer_2, self.text_encoder_2, prompts, penultimate=True)
        return TextConditioning(torch.cat([first[0], second[0]], dim=-1), pooled=second[1])

    @staticmethod
    def _hidden_states(
        tokenizer: CLIPTokenizer, encoder: nn.Module, prompts: list[str], *, penultimate: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ids = tokenizer(
            prompts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(next(encoder.parameters()).device)
        out = encoder(ids, output_hidden_states=penultimate)
        hidden = out.hidden_states[-2] if penultimate else out[0]
        return hidden, out[0] if penultimate else out[1]

    def unet_kwargs(self, cond: TextConditioning, height: int, width: int) -> dict[str, Any]:
        """Keyword arguments for ``unet(latents, t, **kwargs)`` at a pixel size ``height`` x ``width``."""
        kwargs: dict[str, Any] = {"encoder_hidden_states": cond.encoder_hidden_states}
        if self.arch == "sdxl":
            if cond.pooled is None:
                raise ModelLoadError("SDXL conditioning needs pooled text embeddings")
            hidden = cond.encoder_hidden_states
            # SDXL micro-conditioning: original size, crop top-left, target size -> [B, 6].
            time_ids = torch.tensor(
                [height, width, 0, 0, height, width], dtype=hidden.dtype, device=hidden.device
            )
            kwargs["added_cond_kwargs"] = {
                "text_embeds": cond.pooled,
                "time_ids": time_ids.expand(len(hidden), 6),
            }
        return kwargs


def load_base_model(
    path: Path | str,
    *,
    arch: Arch | None = None,
    prediction_type: PredictionType | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    config_dir: Path | None = None,
) -> BaseModel:
    """Load a diffusers folder or an original-layout single file (.safetensors, .ckpt) offline."""
    path = Path(path)
    if arch is not None and arch not in ARCHES:
        raise InvalidOptionError(f"unknown arch {arch!r}; expected one of {ARCHES}", option="arch")
    if prediction_type not in (None, "epsilon", "v_prediction"):
        raise InvalidOptionError(
            f"unknown prediction type {prediction_type!r}; expected epsilon or v_prediction",
            option="prediction_type",
        )
    if not path.exists():
        raise ModelLoadError(f"base model not found: {path}")
    if path.is_dir():
        loaded = _load_folder(path, arch, dtype)
    elif path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        loaded = _load_single_file(path, arch, config_dir, dtype)
    else:
        raise ModelLoadError(
            f"{path.name}: not a diffusers folder nor a {'/'.join(SINGLE_FILE_SUFFIXES)} file"
        )
    modules, tokenizers, scheduler_config, found_arch, found_prediction = loaded
    for module in modules.values():
        if module is not None:
            module.to(device).eval().requires_grad_(False)
    prediction = prediction_type or found_prediction
    scheduler = DDPMScheduler.from_config({**scheduler_config, "prediction_type": prediction})
    return BaseModel(
        arch=cast(Arch, found_arch),
        unet=cast(UNet2DConditionModel, modules["unet"]),
        vae=cast(AutoencoderKL, modules["vae"]),
        text_encoder=cast(CLIPTextModel, modules["text_encoder"]),
        text_encoder_2=cast(CLIPTextModelWithProjection | None, modules.get("text_encoder_2")),
        tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1],
        noise_scheduler=cast(DDPMScheduler, scheduler),
        prediction_type=cast(PredictionType, prediction),
        name=path.stem if path.is_file() else path.name,
        sha256_short=short_hash(path),
        source=path,
    )


_Loaded = tuple[
    dict[str, nn.Module | None], tuple[CLIPTokenizer, CLIPTokenizer | None], dict[str, Any], str, str
]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return cast(dict[str, Any], json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError as exc:
        raise ModelLoadError(f"missing {path.name} in {path.parent}") from exc
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"unreadable {path}: {exc}") from exc


def detect_folder_arch(folder: Path) -> str:
    """sdxl when there is a second text encoder, sd2 for OpenCLIP's GELU text encoder, else sd1."""
    index = _read_json(folder / "model_index.json")
    if index.get("text_encoder_2") or (folder / "text_encoder_2").is_dir():
        return "sdxl"
    text_config = _read_json(folder / "text_encoder" / "config.json")
    # CLIP ViT-L (SD1) uses quick_gelu; OpenCLIP ViT-H (SD2) uses exact GELU.
    return "sd2" if text_config.get("hidden_act") == "gelu" else "sd1"


def _load_folder(folder: Path, arch: str | None, dtype: torch.dtype) -> _Loaded:
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(f"{folder} is not a diffusers folder (no model_index.json)")
    found = arch or detect_folder_arch(folder)
    modules: dict[str, nn.Module | None] = {}
    # low_cpu_mem_usage=False: the meta-device path needs accelerate, which we do not depend on.
    common: dict[str, Any] = {"local_files_only": True}
    try:
        for name, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
            modules[name] = cls.from_pretrained(
                folder, subfolder=name, torch_dtype=dtype, low_cpu_mem_usage=False, **common
            )
        modules["text_encoder"] = CLIPTextModel.from_pretrained(
            folder / "text_encoder", dtype=dtype, **common
        )
        if found == "sdxl":
            modules["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(
                folder / "text_encoder_2", dtype=dtype, **common
            )
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise ModelLoadError(f"cannot load the diffusers folder {folder}: {exc}") from exc
    scheduler_config = _read_json(folder / "scheduler" / "scheduler_config.json")
    prediction = str(scheduler_config.get("prediction_type", "epsilon"))
    if prediction not in ("epsilon", "v_prediction"):
        raise ModelLoadError(f"{folder}: unsupported prediction type {prediction!r} in the scheduler config")
    return modules, tokenizers_for(found, folder), scheduler_config, found, prediction


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read a .safetensors file, or a pickled .ckpt safely (``weights_only=True``), as a flat state dict."""
    if path.suffix.lower() == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelLoadError(f"{path.name}: not a readable safetensors file (truncated?): {exc}") from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(
            f"{path.name}: refused: the pickle holds code or objects other than tensors "
            "(only weights-only checkpoints load; convert it to .safetensors)"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelLoadError(f"{path.name}: not a readable checkpoint: {exc}") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # Lightning checkpoints nest the weights
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path.name}: holds a {type(obj).__name__}, not a state dict")
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def detect_prediction_type(checkpoint: dict[str, torch.Tensor], arch: str) -> str:
    """v_prediction for ComfyUI's ``v_pred`` marker or an SD2 768-v UNet (ComfyUI's test), else epsilon."""
    if V_PRED_MARKER in checkpoint:
        return "v_prediction"
    if arch == "sd2":
        pattern = re.compile(
            re.escape(UNET_PREFIX) + r"output_blocks\.(\d+)\.1\.transformer_blocks\.0\.norm1\.bias"
        )
        found = sorted((int(m[1]), k) for k in checkpoint if (m := pattern.fullmatch(k)))
        # The last attention's norm biases spread wider in 768-v than in the 512 epsilon base.
        if found and torch.std(checkpoint[found[-1][1]].float(), unbiased=False) > 0.09:
            return "v_prediction"
    return "epsilon"


def _build_meta(config_dir: Path, component: str) -> nn.Module:
    """Build one component from its kept config on the meta device (no memory, no init)."""
    path = config_dir / component / "config.json"
    with torch.device("meta"):
        if component == "unet":
            return UNet2DConditionModel.from_config(_read_json(path))
        if component == "vae":
            return AutoencoderKL.from_config(_read_json(path))
        config = CLIPTextConfig.from_json_file(str(path))
        if "CLIPTextModelWithProjection" in (config.architectures or []):
            return CLIPTextModelWithProjection(config)
        return CLIPTextModel(config)


def _materialise(module: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Load weights into a meta-built module (assign, no copy) and rebuild non-persistent buffers."""
    module.load_state_dict(state_dict, strict=True, assign=True)
    for name, buffer in list(module.named_buffers()):
        if not buffer.is_meta:
            continue
        owner_name, _, leaf = name.rpartition(".")
        if leaf != "position_ids":
            raise ModelLoadError(f"internal: buffer {name} has no value after loading")
        owner = module.get_submodule(owner_name)
        owner.register_buffer(leaf, torch.arange(buffer.shape[-1]).expand((1, -1)), persistent=False)
    return module


def _load_single_file(path: Path, arch: str | None, config_dir: Path | None, dtype: torch.dtype) -> _Loaded:
    checkpoint = read_checkpoint(path)
    found = detect_arch(checkpoint)
    if arch is not None and arch != found:
        raise ModelLoadError(f"{path.name} is an {found} checkpoint, not {arch}", option="arch")
    components = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if found == "sdxl" else [])
    candidates = [config_dir] if config_dir else [CONFIG_ROOT / name for name in CONFIG_CANDIDATES[found]]
    first_problems: list[str] = []
    for candidate in candidates:
        metas = {c: _build_meta(candidate, c) for c in components}
        configs = {c: _read_json(candidate / c / "config.json") for c in ("unet", "vae")}
        targets = {c: {k: v.shape for k, v in m.state_dict().items()} for c, m in metas.items()}
        parts, problems = from_original(checkpoint, found, configs, targets)
        if not problems:
            break
        first_problems = first_problems or problems
    else:
        raise ModelLoadError(
            f"{path.name}: the weights do not fit the {found} configuration: " + "; ".join(first_problems[:4])
        )
    prediction = detect_prediction_type(checkpoint, found)
    checkpoint.clear()  # parts hold what is used; let the rest (EMA copies, ...) go now
    modules: dict[str, nn.Module | None] = {}
    for c in components:
        # Cast tensor by tensor, dropping each source as we go, so a cast never doubles the model.
        state = parts.pop(c)
        modules[c] = _materialise(metas[c], {k: state.pop(k).to(dtype) for k in list(state)})
    scheduler_config = _read_json(candidate / "scheduler" / "scheduler_config.json")
    return modules, tokenizers_for(found), scheduler_config, found, prediction
