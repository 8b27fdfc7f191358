"""Base models offline: kept configs, single-file <-> folder parity, detection, safety, hashes, errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers.models.attention_processor import Attention
from safetensors.torch import load_file, save_file

from core.cli import main as cli_main
from core.errors import ModelLoadError
from core.models import TINY_WIDTHS, load_base_model, make_tiny_model
from core.models.loading import (
    CONFIG_ROOT,
    BaseModel,
    _build_meta,
    _read_json,
    detect_prediction_type,
    read_checkpoint,
)
from core.models.single_file import canonical_clip, detect_arch, from_original, to_original

ARCHES = ("sd1", "sd2", "sdxl")
REAL = {"sd1": "sd15", "sd2": "sd2", "sdxl": "sdxl"}


def _components(arch: str) -> list[str]:
    return ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if arch == "sdxl" else [])


def _unet_out(model: BaseModel, prompts: list[str]) -> torch.Tensor:
    torch.manual_seed(0)
    latents = torch.randn(len(prompts), 4, 8, 8)  # 64x64 pixels / 8
    cond = model.encode_prompts(prompts)
    return model.unet(
        latents, torch.tensor([10, 700][: len(prompts)]), **model.unet_kwargs(cond, 64, 64)
    ).sample


@pytest.fixture
def tiny(request: pytest.FixtureRequest) -> Path:
    return Path(request.getfixturevalue(f"tiny_{request.param}"))


@pytest.mark.parametrize("tiny", ARCHES, indirect=True)
def test_single_file_matches_its_folder(tiny: Path) -> None:
    folder, single = load_base_model(tiny), load_base_model(tiny / "model.safetensors")
    assert folder.arch == single.arch and folder.prediction_type == single.prediction_type
    prompts = ["a photo of a cat", "an oil painting"]
    a, b = folder.encode_prompts(prompts), single.encode_prompts(prompts)
    assert torch.equal(a.encoder_hidden_states, b.encoder_hidden_states)
    assert (a.pooled is None) == (single.arch != "sdxl")
    if a.pooled is not None:
        assert b.pooled is not None and torch.equal(a.pooled, b.pooled)
    out = _unet_out(folder, prompts)
    assert out.shape == (2, 4, 8, 8) and out.abs().sum() > 0
    assert torch.equal(out, _unet_out(single, prompts))
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    image = folder.vae.decode(latents).sample
    assert image.shape == (1, 3, 64, 64) and folder.vae_scale_factor == 8
    assert torch.equal(image, single.vae.decode(latents).sample)
    # Base models come frozen.
    assert not any(p.requires_grad for p in single.unet.parameters()) and not single.unet.training


def test_tiny_models_have_the_promised_structure(tiny_sd1: Path, tiny_sd2: Path, tiny_sdxl: Path) -> None:
    sd1, sd2, sdxl = (load_base_model(p) for p in (tiny_sd1, tiny_sd2, tiny_sdxl))
    for model in (sd1, sd2, sdxl):
        widths = TINY_WIDTHS[model.arch]
        assert model.unet.config.cross_attention_dim == widths[0]
        # Every context width an attention layer's K projection sees (self- and cross-attention).
        seen = {m.to_k.in_features for m in model.unet.modules() if isinstance(m, Attention)}
        assert seen == set(widths)
    assert (sd1.prediction_type, sd2.prediction_type, sdxl.prediction_type) == (
        "epsilon",
        "v_prediction",
        "epsilon",
    )
    assert sd1.tokenizer.pad_token_id == 49407 and sd2.tokenizer.pad_token_id == 0
    assert sdxl.tokenizer.pad_token_id == 49407 and sdxl.tokenizer_2 is not None
    assert sdxl.tokenizer_2.pad_token_id == 0
    assert sdxl.latent_scaling_factor == 0.13025 and sd1.latent_scaling_factor == 0.18215
    cond = sdxl.encode_prompts(["a", "b", "c"])
    assert cond.encoder_hidden_states.shape == (3, 77, 80) and cond.pooled is not None
    assert cond.pooled.shape == (3, 48)
    kwargs = sdxl.unet_kwargs(cond, 64, 96)
    assert kwargs["added_cond_kwargs"]["time_ids"].tolist() == [[64.0, 96.0, 0.0, 0.0, 64.0, 96.0]] * 3
    assert "added_cond_kwargs" not in sd1.unet_kwargs(sd1.encode_prompts(["a"]), 64, 64)


def test_real_configs_are_the_published_ones() -> None:
    unet = {arch: _read_json(CONFIG_ROOT / REAL[arch] / "unet" / "config.json") for arch in ARCHES}
    assert [unet[a]["cross_attention_dim"] for a in ARCHES] == [768, 1024, 2048]
    assert [unet[a]["attention_head_dim"] for a in ARCHES] == [8, [5, 10, 20, 20], [5, 10, 20]]
    assert unet["sdxl"]["transformer_layers_per_block"] == [1, 2, 10]
    assert unet["sdxl"]["projection_class_embeddings_input_dim"] == 2816
    assert not unet["sd1"].get("use_linear_projection") and unet["sd2"]["use_linear_projection"]
    text = {arch: _read_json(CONFIG_ROOT / REAL[arch] / "text_encoder" / "config.json") for arch in ARCHES}
    assert [(text[a]["hidden_size"], text[a]["num_hidden_layers"]) for a in ARCHES] == [
        (768, 12),
        (1024, 23),
        (768, 12),
    ]
    text2 = _read_json(CONFIG_ROOT / "sdxl" / "text_encoder_2" / "config.json")
    assert (text2["hidden_size"], text2["num_hidden_layers"], text2["projection_dim"]) == (1280, 32, 1280)
    sched = {
        arch: _read_json(CONFIG_ROOT / REAL[arch] / "scheduler" / "scheduler_config.json") for arch in ARCHES
    }
    assert sched["sd2"]["prediction_type"] == "v_prediction"
    assert all(s["beta_schedule"] == "scaled_linear" and s["beta_end"] == 0.012 for s in sched.values())
    assert _read_json(CONFIG_ROOT / "sdxl" / "vae" / "config.json")["scaling_factor"] == 0.13025


@pytest.mark.parametrize("arch", ARCHES)
def test_real_layout_conversion_matches_diffusers_reference(arch: str) -> None:
    """Real configs on the meta device: our names are the original ones diffusers' converter reads back."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    config_dir = CONFIG_ROOT / REAL[arch]
    parts = {c: _build_meta(config_dir, c).state_dict() for c in _components(arch)}
    configs = {c: _read_json(config_dir / c / "config.json") for c in ("unet", "vae")}
    original = to_original(parts, configs, arch)
    assert detect_arch(original) == arch
    # Tensors are the same objects, so identity shows each key went to the same place.
    reference = convert_ldm_unet_checkpoint(dict(original), configs["unet"])
    assert reference.keys() == parts["unet"].keys()
    assert all(reference[k] is parts["unet"][k] for k in reference)
    vae = convert_ldm_vae_checkpoint(dict(original), configs["vae"])
    assert vae.keys() == parts["vae"].keys()
    assert all(vae[k].shape == parts["vae"][k].shape for k in vae)
    targets = {c: {k: v.shape for k, v in sd.items()} for c, sd in parts.items()}
    assert from_original(original, arch, configs, targets)[1] == []
    known = {
        "sd1": ["cond_stage_model.transformer.text_model.final_layer_norm.weight"],
        "sd2": [
            "cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight",  # the unused 24th block
            "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias",
        ],
        "sdxl": [
            "model.diffusion_model.label_emb.0.0.weight",
            "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.attn2.to_k.weight",
            "model.diffusion_model.output_blocks.2.2.conv.weight",
            "conditioner.embedders.1.model.text_projection",
        ],
    }[arch]
    assert all(k in original for k in [*known, "model.diffusion_model.out.2.weight"])
    assert original["first_stage_model.decoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)


@pytest.mark.parametrize("tiny", ["sd2", "sdxl"], indirect=True)
def test_tiny_single_file_matches_diffusers_reference_values(tiny: Path) -> None:
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )

    original = load_file(str(tiny / "model.safetensors"))
    model = load_base_model(tiny)
    unet = convert_ldm_unet_checkpoint(dict(original), dict(model.unet.config))
    assert all(torch.equal(unet[k], v) for k, v in model.unet.state_dict().items())
    vae = convert_ldm_vae_checkpoint(dict(original), dict(model.vae.config))
    assert all(torch.equal(vae[k], v) for k, v in model.vae.state_dict().items())
    encoder = model.text_encoder_2 if model.arch == "sdxl" else model.text_encoder
    prefix = "conditioner.embedders.1.model." if model.arch == "sdxl" else "cond_stage_model.model."
    text = convert_open_clip_checkpoint(encoder, original, prefix=prefix)
    ours = canonical_clip(encoder.state_dict())
    assert all(torch.equal(text[k], v) for k, v in ours.items())


def test_arch_and_prediction_type_detection(tiny_sd2: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a Stable Diffusion checkpoint"):
        detect_arch(["lora_unet_down_blocks_0.alpha", "first_stage_model.encoder.conv_in.weight"])
    with pytest.raises(ModelLoadError, match="unknown checkpoint layout"):
        detect_arch(["model.diffusion_model.out.2.weight"])
    assert load_base_model(tiny_sd2 / "model.safetensors").prediction_type == "v_prediction"
    forced = load_base_model(tiny_sd2 / "model.safetensors", prediction_type="epsilon")
    assert forced.prediction_type == "epsilon" and forced.noise_scheduler.config.prediction_type == "epsilon"
    with pytest.raises(ModelLoadError, match="is an sd2 checkpoint, not sd1"):
        load_base_model(tiny_sd2 / "model.safetensors", arch="sd1")
    # ComfyUI's heuristic for SD2 768-v: the last attention's norm1 bias spreads wide.
    key = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
    wide, narrow = torch.randn(320, generator=torch.Generator().manual_seed(0)), torch.zeros(320)
    assert detect_prediction_type({key: wide * 0.2}, "sd2") == "v_prediction"
    assert detect_prediction_type({key: narrow}, "sd2") == "epsilon"
    assert detect_prediction_type({key: wide * 0.2}, "sd1") == "epsilon"


def test_ckpt_loads_safely_and_code_is_refused(tiny_sd1: Path, tmp_path: Path) -> None:
    weights = load_file(str(tiny_sd1 / "model.safetensors"))
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": weights, "global_step": 10}, ckpt)
    from_ckpt = load_base_model(ckpt)
    from_safetensors = load_base_model(tiny_sd1 / "model.safetensors")
    assert torch.equal(_unet_out(from_ckpt, ["x"]), _unet_out(from_safetensors, ["x"]))
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": weights, "x": Payload()}, evil)
    with pytest.raises(ModelLoadError, match="refused"):
        load_base_model(evil)
    assert not marker.exists()


def test_short_hash_is_a1111s(tiny_sd1: Path, tmp_path: Path) -> None:
    single = tiny_sd1 / "model.safetensors"
    assert load_base_model(single).sha256_short == hashlib.sha256(single.read_bytes()).hexdigest()[:10]
    folder_hash = load_base_model(tiny_sd1).sha256_short
    copy = tmp_path / "copy"
    shutil.copytree(tiny_sd1, copy)
    (copy / "model.safetensors").unlink()  # files beside the components do not count
    assert load_base_model(copy).sha256_short == folder_hash  # the canonical digest is location-free
    config = copy / "unet" / "config.json"
    config.write_text(config.read_text() + " ")
    assert load_base_model(copy).sha256_short != folder_hash


def test_make_tiny_model_is_deterministic(tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert cli_main(["make-tiny-model", str(tmp_path / name), "--arch", "sd1", "--single-file"]) == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert Path("model.safetensors") in files and Path("unet/diffusion_pytorch_model.safetensors") in files
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    other = make_tiny_model(tmp_path / "c", arch="sd1", seed=1)
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert (other / weights).read_bytes() != (tmp_path / "a" / weights).read_bytes()


def test_clear_errors(tiny_sd1: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_base_model(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match=r"no model_index\.json"):
        load_base_model(tmp_path)
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(os.urandom(4096))
    with pytest.raises(ModelLoadError, match="not a readable safetensors"):
        load_base_model(noise)
    data = (tiny_sd1 / "model.safetensors").read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated"):
        load_base_model(truncated)
    with pytest.raises(ModelLoadError, match="not a diffusers folder nor"):
        load_base_model(tiny_sd1 / "model_index.json")
    weights = read_checkpoint(tiny_sd1 / "model.safetensors")
    weights["model.diffusion_model.out.2.weight"] = torch.zeros(4, 32, 3, 1)
    del weights["first_stage_model.decoder.conv_in.bias"]
    broken = tmp_path / "broken.safetensors"
    save_file(weights, str(broken))
    with pytest.raises(ModelLoadError, match="do not fit the sd1 configuration") as info:
        load_base_model(broken)
    assert "wrong shapes" in str(info.value) and "missing" in str(info.value)
    index = tmp_path / "partial"
    shutil.copytree(tiny_sd1, index, ignore=shutil.ignore_patterns("diffusion_pytorch_model.safetensors"))
    with pytest.raises(ModelLoadError, match="cannot load the diffusers folder"):
        load_base_model(index)
    assert json.loads((index / "model_index.json").read_text())["unet"] == [
        "diffusers",
        "UNet2DConditionModel",
    ]


def test_dtype_and_freezing(tiny_sdxl: Path) -> None:
    for source in (tiny_sdxl, tiny_sdxl / "model.safetensors"):
        model = load_base_model(source, dtype=torch.bfloat16)
        assert model.text_encoder_2 is not None
        for module in (model.unet, model.vae, model.text_encoder, model.text_encoder_2):
            assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
            assert not any(p.requires_grad for p in module.parameters())
        assert model.encode_prompts(["a"]).encoder_hidden_states.dtype == torch.bfloat16
