"""Original Stable Diffusion checkpoint layout <-> diffusers state dicts, both directions.

A1111 and model sites distribute one file holding every part under the original
(CompVis/Stability) names: ``model.diffusion_model.*`` (UNet), ``first_stage_model.*``
(VAE) and the text encoder(s): HF CLIP layout under ``cond_stage_model.transformer.``
(SD1) / ``conditioner.embedders.0.transformer.`` (SDXL), OpenCLIP layout under
``cond_stage_model.model.`` (SD2) / ``conditioner.embedders.1.model.`` (SDXL).
Names are derived from the diffusers configs, so tiny models convert like real ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from core.errors import ModelLoadError

StateDict = dict[str, torch.Tensor]
Shapes = Mapping[str, torch.Size]

# ComfyUI's marker key for v-prediction checkpoints (an empty tensor; we write and read it).
V_PRED_MARKER = "v_pred"
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# (component, layout, prefix) of each text encoder, per arch.
TEXT_ENCODERS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "sd1": (("text_encoder", "clip", "cond_stage_model.transformer."),),
    "sd2": (("text_encoder", "openclip", "cond_stage_model.model."),),
    "sdxl": (
        ("text_encoder", "clip", "conditioner.embedders.0.transformer."),
        ("text_encoder_2", "openclip", "conditioner.embedders.1.model."),
    ),
}
# Keys that real checkpoints carry but no diffusers module holds (buffers, the CLIP logit scale).
_IGNORED = re.compile(r".*(position_ids|logit_scale)$|first_stage_model\.loss\.")

_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPENCLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_OPENCLIP_FIXED = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}


def detect_arch(keys: Iterable[str]) -> str:
    """Tell sd1/sd2/sdxl apart from the key layout of an original-layout checkpoint."""
    keys = list(keys)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if not has(UNET_PREFIX):
        found = sorted({".".join(k.split(".")[:2]) for k in keys})[:5]
        raise ModelLoadError(
            f"not a Stable Diffusion checkpoint: no '{UNET_PREFIX}*' keys (found {found}); "
            "LoRAs, VAEs, embeddings and diffusers-layout files are not base models"
        )
    if has(TEXT_ENCODERS["sdxl"][0][2]) and has(TEXT_ENCODERS["sdxl"][1][2]):
        return "sdxl"
    if has(TEXT_ENCODERS["sd2"][0][2]):
        return "sd2"
    if has(TEXT_ENCODERS["sd1"][0][2]):
        return "sd1"
    raise ModelLoadError("unknown checkpoint layout: a UNet but no SD1/SD2/SDXL text encoder keys")


def _resnet(rest: str, table: Mapping[str, str]) -> str:
    head, tail = rest.split(".", 1)
    return f"{table.get(head, head)}.{tail}"


def unet_key_to_original(key: str, config: Mapping[str, Any]) -> str:
    """Original name (without prefix) of a diffusers UNet key."""
    module, param = key.rsplit(".", 1)
    if module in _UNET_FIXED:
        return f"{_UNET_FIXED[module]}.{param}"
    n = config["layers_per_block"]
    if not isinstance(n, int):
        raise ModelLoadError("UNets with per-block layers_per_block have no original layout")
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block = 1 + int(m[1]) * (n + 1) + int(m[3])
        if m[2] == "resnets":
            return f"input_blocks.{block}.0.{_resnet(m[4], _UNET_RESNET)}"
        return f"input_blocks.{block}.1.{m[4]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * (n + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2], _UNET_RESNET)}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block = int(m[1]) * (n + 1) + int(m[3])  # up blocks hold n + 1 layers
        if m[2] == "resnets":
            return f"output_blocks.{block}.0.{_resnet(m[4], _UNET_RESNET)}"
        return f"output_blocks.{block}.1.{m[4]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        i = int(m[1])
        # The upsampler follows the resnet (and the attention, when the block has one).
        slot = 2 if config["up_block_types"][i].startswith("CrossAttn") else 1
        return f"output_blocks.{i * (n + 1) + n}.{slot}.conv.{m[2]}"
    raise ModelLoadError(f"no original-layout name for the UNet key {key!r}")


def vae_key_to_original(key: str, config: Mapping[str, Any]) -> str:
    """Original name (without prefix) of a diffusers AutoencoderKL key."""
    levels = len(config["up_block_types"])
    side, rest = key.split(".", 1) if key.startswith(("encoder.", "decoder.")) else ("", key)
    if not side:
        return key  # quant_conv, post_quant_conv
    if rest.startswith("conv_norm_out."):
        return f"{side}.norm_out.{rest.split('.', 1)[1]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", rest):
        return f"{side}.mid.block_{int(m[1]) + 1}.{_resnet(m[2], {'conv_shortcut': 'nin_shortcut'})}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)", rest):
        return f"{side}.mid.attn_1.{_VAE_ATTN[m[1]]}.{m[2]}"
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)", rest):
        # Decoder up blocks run in the opposite order: diffusers up_blocks.i is up.{levels-1-i}.
        level = int(m[2]) if m[1] == "down" else levels - 1 - int(m[2])
        if m[3] == "resnets":
            return f"{side}.{m[1]}.{level}.block.{m[4]}.{_resnet(m[5], {'conv_shortcut': 'nin_shortcut'})}"
        return f"{side}.{m[1]}.{level}.{m[1]}sample.{m[5]}"
    return key  # conv_in, conv_out


def _is_vae_attn_weight(original: str) -> bool:
    # The original VAE attention uses 1x1 convolutions: weights [C, C, 1, 1] vs diffusers Linear [C, C].
    return re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", original) is not None


def canonical_clip(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """HF CLIP keys with the ``text_model.`` prefix, as checkpoints write them.

    transformers 5's ``CLIPTextModel`` dropped that wrapper from its own state dict
    (``embeddings.*``) while ``CLIPTextModelWithProjection`` keeps it.
    """
    return {
        k if k.startswith(("text_model.", "text_projection.")) else f"text_model.{k}": v
        for k, v in sd.items()
    }


def _fit_clip(sd: StateDict, shapes: Shapes) -> StateDict:
    """Canonical HF CLIP keys -> the naming the target model uses."""
    if any(k.startswith("text_model.") for k in shapes):
        return sd
    return {k.removeprefix("text_model."): v for k, v in sd.items()}


def hf_clip_to_openclip(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """HF CLIPTextModel(WithProjection) keys -> OpenCLIP text-tower keys (fused q/k/v)."""
    out: StateDict = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in canonical_clip(sd).items():
        if key in _OPENCLIP_FIXED:
            out[_OPENCLIP_FIXED[key]] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()  # OpenCLIP computes x @ P, P: [width, embed]
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key):
            if q := re.fullmatch(r"self_attn\.(q|k|v)_proj", m[2]):
                qkv.setdefault(f"transformer.resblocks.{m[1]}.attn.in_proj_{m[3]}", {})[q[1]] = value
            else:
                out[f"transformer.resblocks.{m[1]}.{_OPENCLIP_LAYER[m[2]]}.{m[3]}"] = value
        elif not _IGNORED.match(key):
            raise ModelLoadError(f"no OpenCLIP name for the text encoder key {key!r}")
    for name, parts in qkv.items():
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)  # [3*width, width]
    return out


def openclip_to_hf(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """OpenCLIP text-tower keys -> HF CLIP keys (q/k/v split from the fused in_proj)."""
    inverse_fixed = {v: k for k, v in _OPENCLIP_FIXED.items()}
    inverse_layer = {v: k for k, v in _OPENCLIP_LAYER.items()}
    out: StateDict = {}
    for key, value in sd.items():
        if key in inverse_fixed:
            out[inverse_fixed[key]] = value
        elif key == "text_projection":
            out["text_projection.weight"] = value.T.contiguous()
        elif m := re.fullmatch(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", key):
            # Fused [3*width, width] (or [3*width]) -> q, k, v in that order.
            for name, part in zip("qkv", value.chunk(3, dim=0), strict=True):
                out[f"text_model.encoder.layers.{m[1]}.self_attn.{name}_proj.{m[2]}"] = part
        elif (m := re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)", key)) and (
            m[2] in inverse_layer
        ):
            out[f"text_model.encoder.layers.{m[1]}.{inverse_layer[m[2]]}.{m[3]}"] = value
        elif not _IGNORED.match(key):
            out[key] = value
    return out


def to_original(
    parts: Mapping[str, Mapping[str, torch.Tensor]], configs: Mapping[str, Mapping[str, Any]], arch: str
) -> StateDict:
    """Diffusers component state dicts -> one original-layout state dict (as A1111 loads it)."""
    out: StateDict = {}
    for key, value in parts["unet"].items():
        out[UNET_PREFIX + unet_key_to_original(key, configs["unet"])] = value
    for key, value in parts["vae"].items():
        name = vae_key_to_original(key, configs["vae"])
        out[VAE_PREFIX + name] = value[..., None, None] if _is_vae_attn_weight(name) else value
    for component, layout, prefix in TEXT_ENCODERS[arch]:
        sd = canonical_clip(parts[component])
        if layout == "clip":
            out.update({prefix + k: v for k, v in sd.items()})
            continue
        converted = hf_clip_to_openclip(sd)
        if arch == "sd2":
            converted.update(_sd2_unused_tail(converted))
        out.update({prefix + k: v for k, v in converted.items()})
    return {k: v.contiguous() for k, v in out.items()}


def _sd2_unused_tail(openclip: StateDict) -> StateDict:
    """The parts of OpenCLIP-H that SD2 checkpoints carry but never use (it reads layer -2)."""
    layers = {int(m[1]) for k in openclip if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))}
    last = max(layers)
    # A copy of the last used block stands in for the final block SD2 skips.
    tail = {
        k.replace(f"resblocks.{last}.", f"resblocks.{last + 1}.", 1): v.clone()
        for k, v in openclip.items()
        if k.startswith(f"transformer.resblocks.{last}.")
    }
    width = openclip["ln_final.weight"].shape[0]
    tail["text_projection"] = torch.eye(width, dtype=openclip["ln_final.weight"].dtype)
    return tail


def from_original(
    checkpoint: Mapping[str, torch.Tensor],
    arch: str,
    configs: Mapping[str, Mapping[str, Any]],
    targets: Mapping[str, Shapes],
) -> tuple[dict[str, StateDict], list[str]]:
    """Original-layout checkpoint -> diffusers state dicts for the ``targets`` shapes, and the problems."""
    parts: dict[str, StateDict] = {}
    problems: list[str] = []
    used: set[str] = set()
    for component, prefix, namer in (
        ("unet", UNET_PREFIX, unet_key_to_original),
        ("vae", VAE_PREFIX, vae_key_to_original),
    ):
        sd: StateDict = {}
        for key in targets[component]:
            original = prefix + namer(key, configs[component])
            if original in checkpoint:
                value = checkpoint[original]
                sd[key] = value[:, :, 0, 0] if _is_vae_attn_weight(original) and value.ndim == 4 else value
                used.add(original)
        parts[component] = sd
    for component, layout, prefix in TEXT_ENCODERS[arch]:
        sub = {k[len(prefix) :]: v for k, v in checkpoint.items() if k.startswith(prefix)}
        used.update(prefix + k for k in sub)
        sd = canonical_clip(sub) if layout == "clip" else openclip_to_hf(sub)
        if arch == "sd2":
            # SD2 conditions on the penultimate layer: diffusers keeps one block fewer and no projection.
            tail = _sd2_tail_keys(targets[component])
            sd = {k: v for k, v in sd.items() if not k.startswith(tail)}
        parts[component] = _fit_clip(
            {k: v for k, v in sd.items() if not _IGNORED.match(k)}, targets[component]
        )
    for component, shapes in targets.items():
        problems += _compare(component, parts.get(component, {}), shapes)
    for prefix in (UNET_PREFIX, VAE_PREFIX):
        extra = [k for k in checkpoint if k.startswith(prefix) and k not in used and not _IGNORED.match(k)]
        if extra:
            problems.append(f"{len(extra)} unexpected keys, e.g. {extra[:3]}")
    return parts, problems


def _sd2_tail_keys(shapes: Shapes) -> tuple[str, ...]:
    layers = {int(m[1]) for k in shapes if (m := re.match(r"(?:text_model\.)?encoder\.layers\.(\d+)\.", k))}
    return (f"text_model.encoder.layers.{len(layers)}.", "text_projection.weight")


def _compare(component: str, sd: Mapping[str, torch.Tensor], shapes: Shapes) -> list[str]:
    problems = []
    missing = [k for k in shapes if k not in sd]
    unexpected = [k for k in sd if k not in shapes]
    wrong = [
        f"{k} {tuple(sd[k].shape)} != {tuple(shape)}"
        for k, shape in shapes.items()
        if k in sd and sd[k].shape != shape
    ]
    if missing:
        problems.append(f"{component}: {len(missing)} missing keys, e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{component}: {len(unexpected)} unexpected keys, e.g. {unexpected[:3]}")
    if wrong:
        problems.append(f"{component}: {len(wrong)} wrong shapes, e.g. {wrong[:3]}")
    return problems
