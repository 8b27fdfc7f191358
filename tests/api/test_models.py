"""Base models: registration by an operator (with detection) and the tenants' list."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from tests.api.conftest import ApiEnv


def _safetensors(path: Path, names: list[str]) -> bytes:
    header = json.dumps({n: {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]} for n in names}).encode()
    data = struct.pack("<Q", len(header)) + header + b"\x00\x00"
    path.write_bytes(data)
    return data


def _diffusers_folder(path: Path, cross_attention_dim: int) -> Path:
    (path / "unet").mkdir(parents=True)
    (path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (path / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": cross_attention_dim}))
    return path


def test_register_and_list(any_env: ApiEnv, tmp_path: Path) -> None:
    client, admin = any_env.client, any_env.admin_headers
    folder = _diffusers_folder(tmp_path / "sd21", 1024)
    single = tmp_path / "xl.safetensors"
    data = _safetensors(single, ["conditioner.embedders.1.model.ln_final.weight", "model.diffusion_model.x"])

    r = client.post("/v1/admin/models", json={"name": "sd21", "uri": str(folder)}, headers=admin)
    assert r.status_code == 201, r.text
    assert r.json()["arch"] == "sd2" and r.json()["format"] == "diffusers"
    assert len(r.json()["sha256_short"]) == 10

    r = client.post("/v1/admin/models", json={"name": "sdxl", "uri": str(single)}, headers=admin)
    assert r.status_code == 201, r.text
    assert (r.json()["arch"], r.json()["format"]) == ("sdxl", "single_file")
    assert r.json()["sha256_short"] == hashlib.sha256(data).hexdigest()[:10]

    remote = {
        "name": "sd15",
        "uri": "s3://models/sd15.safetensors",
        "arch": "sd1",
        "sha256": "6CE0161689B3853AC",
    }
    r = client.post("/v1/admin/models", json=remote, headers=admin)
    assert r.status_code == 201, r.text
    assert r.json()["sha256_short"] == "6ce0161689" and r.json()["format"] == "single_file"

    tenant = any_env.tenant()
    listed = client.get("/v1/models", headers=tenant.headers)
    assert listed.status_code == 200
    assert [(m["name"], m["arch"]) for m in listed.json()["data"]] == [
        ("sd15", "sd1"),
        ("sd21", "sd2"),
        ("sdxl", "sdxl"),
    ]
    assert all(m["id"].startswith("mdl_") for m in listed.json()["data"])
    assert "uri" not in listed.json()["data"][0]  # where the weights live is the operator's business


def test_registration_problems(api_env: ApiEnv, tmp_path: Path) -> None:
    client, admin = api_env.client, api_env.admin_headers
    unknown_arch = tmp_path / "plain.safetensors"
    _safetensors(unknown_arch, ["something.else"])
    not_a_model = tmp_path / "empty-folder"
    not_a_model.mkdir()
    cases = [
        ({"name": "a", "uri": str(tmp_path / "missing")}, 422, "model_not_found"),
        ({"name": "b", "uri": "https://example.com/m.safetensors"}, 422, "arch_required"),
        ({"name": "c", "uri": str(unknown_arch)}, 422, "arch_required"),
        ({"name": "d", "uri": str(not_a_model)}, 422, "unknown_model_format"),
        ({"name": "e", "uri": "/", "format": "diffusers", "arch": "sd1"}, 422, "unknown_model_format"),
        (
            {"name": "f", "uri": str(unknown_arch), "format": "diffusers", "arch": "sd1"},
            422,
            "format_mismatch",
        ),
        ({"name": "g", "uri": "/tmp/a\x00b"}, 422, "validation_failed"),
    ]
    for body, status, code in cases:
        r = client.post("/v1/admin/models", json=body, headers=admin)
        assert (r.status_code, r.json()["code"]) == (status, code), body
    ok = {"name": "sd15", "uri": str(unknown_arch), "arch": "sd1"}
    assert client.post("/v1/admin/models", json=ok, headers=admin).status_code == 201
    again = client.post("/v1/admin/models", json=ok, headers=admin)
    assert again.status_code == 409 and again.json()["code"] == "model_exists"


def test_registered_hash_is_the_one_written_into_hypernetworks(api_env: ApiEnv, tmp_path: Path) -> None:
    """/v1/models' sha256_short equals the sd_checkpoint core records for the same model."""
    from core.models import load_base_model, make_tiny_model

    folder = make_tiny_model(tmp_path / "tiny", "sd1")
    r = api_env.client.post(
        "/v1/admin/models",
        json={"name": "tiny", "uri": str(folder), "arch": "sd1"},
        headers=api_env.admin_headers,
    )
    assert r.status_code == 201, r.text
    assert r.json()["sha256_short"] == load_base_model(folder).sha256_short
