"""The training spec: defaults, JSON pointers and codes of every refusal, resolution, estimates."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Any

import pytest

from core.errors import InvalidOptionError
from core.spec import (
    SpecError,
    TrainingSpec,
    estimate,
    parse_spec,
    resolve_spec,
    spec_to_dict,
    spec_warnings,
)


def _errors(data: dict[str, Any]) -> list[dict[str, str]]:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert isinstance(info.value, InvalidOptionError)
    return info.value.errors


def test_defaults_follow_the_service_api_example() -> None:
    spec = parse_spec({})
    assert spec == TrainingSpec()
    assert spec.dataset_id is None and spec.base_model is None
    hn = spec.hypernetwork
    assert hn.layer_structure == (1.0, 2.0, 1.0) and hn.activation_func == "relu"
    assert hn.weight_initialization == "Normal" and hn.enable_sizes is None
    t = spec.training
    assert (t.learn_rate, t.steps, t.batch_size, t.gradient_accumulation_steps) == ("5e-6", 10000, 1, 1)
    assert (t.width, t.height, t.clip_grad_mode, t.clip_grad_value) == (512, 512, "disabled", "0.1")
    assert (t.latent_sampling_method, t.template, t.optimizer, t.mixed_precision) == (
        "deterministic",
        "style_filewords",
        "AdamW",
        "auto",
    )
    assert (t.noise_offset, t.min_snr_gamma, t.seed) == (0.0, None, None)
    assert (spec.checkpoints.save_every, spec.checkpoints.save_optimizer_state) == (500, True)
    assert (spec.samples.every, spec.samples.strengths) == (500, (0.0, 0.5, 1.0))


def test_full_example_round_trips() -> None:
    data = {
        "name": "inkwash",
        "dataset_id": "ds_1",
        "base_model": "sd15",
        "hypernetwork": {"layer_structure": [1, 1.5, 1], "activation_func": "swish", "is_layer_norm": False},
        "training": {"learn_rate": "5e-5:100, 5e-6", "steps": 200, "gradient_checkpointing": True},
        "samples": {"every": 50, "prompts": [{"prompt": "a cat", "sampler": "dpm++_2m_karras"}]},
        "metadata": {"k": [1, "two"]},
    }
    spec = parse_spec(data)
    assert spec.training.gradient_checkpointing == "true"
    custom = parse_spec({"training": {"template": "a [name] picture\nan image of [filewords]"}})
    assert custom.training.template.startswith("a [name]")
    assert spec.samples.prompts[0].cfg_scale == 7.0
    assert parse_spec(spec_to_dict(spec)) == spec
    assert spec_to_dict(spec)["hypernetwork"]["layer_structure"] == [1.0, 1.5, 1.0]


def test_a_number_learn_rate_is_kept_as_a_schedule_string() -> None:
    assert parse_spec({"training": {"learn_rate": 1e-5}}).training.learn_rate == "1e-05"


def test_specs_are_frozen() -> None:
    spec = parse_spec({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "pointer", "code"),
    [
        ({"nme": "x"}, "/nme", "unknown_field"),
        ({"training": {"stepz": 3}}, "/training/stepz", "unknown_field"),
        ({"samples": {"prompts": [{"prompt": "a", "cfg": 3}]}}, "/samples/prompts/0/cfg", "unknown_field"),
        ({"samples": {"prompts": [{}]}}, "/samples/prompts/0/prompt", "missing"),
        ({"training": {"steps": 0}}, "/training/steps", "out_of_range"),
        ({"training": {"steps": "many"}}, "/training/steps", "invalid_type"),
        ({"training": {"batch_size": 0}}, "/training/batch_size", "out_of_range"),
        (
            {"training": {"gradient_accumulation_steps": 0}},
            "/training/gradient_accumulation_steps",
            "out_of_range",
        ),
        ({"training": {"width": 500}}, "/training/width", "out_of_range"),
        ({"training": {"height": 32}}, "/training/height", "out_of_range"),
        ({"training": {"tag_drop_out": 1.0}}, "/training/tag_drop_out", "out_of_range"),
        ({"training": {"tag_drop_out": -0.1}}, "/training/tag_drop_out", "out_of_range"),
        ({"training": {"clip_grad_mode": "clip"}}, "/training/clip_grad_mode", "invalid_choice"),
        ({"training": {"latent_sampling_method": "x"}}, "/training/latent_sampling_method", "invalid_choice"),
        ({"training": {"mixed_precision": "fp8"}}, "/training/mixed_precision", "invalid_choice"),
        (
            {"training": {"gradient_checkpointing": "maybe"}},
            "/training/gradient_checkpointing",
            "invalid_choice",
        ),
        ({"training": {"learn_rate": "fast"}}, "/training/learn_rate", "invalid_schedule"),
        ({"training": {"learn_rate": "1e-5:100, 1e-6:50"}}, "/training/learn_rate", "invalid_schedule"),
        ({"training": {"learn_rate": True}}, "/training/learn_rate", "invalid_type"),
        ({"training": {"clip_grad_value": "0.1:x"}}, "/training/clip_grad_value", "invalid_schedule"),
        ({"training": {"template": "watercolour"}}, "/training/template", "invalid_template"),
        ({"training": {"template": ""}}, "/training/template", "out_of_range"),
        ({"training": {"optimizer": "LBFGS"}}, "/training/optimizer", "unknown_optimizer"),
        ({"training": {"noise_offset": -1}}, "/training/noise_offset", "out_of_range"),
        ({"training": {"min_snr_gamma": 0}}, "/training/min_snr_gamma", "out_of_range"),
        ({"training": {"seed": -1}}, "/training/seed", "out_of_range"),
        ({"checkpoints": {"save_every": -1}}, "/checkpoints/save_every", "out_of_range"),
        ({"samples": {"strengths": []}}, "/samples/strengths", "out_of_range"),
        ({"samples": {"strengths": [3.0]}}, "/samples/strengths", "out_of_range"),
        (
            {"samples": {"prompts": [{"prompt": "a", "sampler": "plms"}]}},
            "/samples/prompts/0/sampler",
            "invalid_choice",
        ),
        ({"samples": {"prompts": [{"prompt": "a", "steps": 0}]}}, "/samples/prompts/0/steps", "out_of_range"),
        ({"metadata": []}, "/metadata", "invalid_type"),
        ({"metadata": {"a": {1, 2}}}, "/metadata/a", "invalid_type"),
        ({"hypernetwork": {"layer_structure": [2, 2, 1]}}, "/hypernetwork/layer_structure", "invalid_option"),
        ({"hypernetwork": {"layer_structure": [1, 0, 1]}}, "/hypernetwork/layer_structure", "invalid_option"),
        ({"hypernetwork": {"activation_func": "gelu"}}, "/hypernetwork/activation_func", "invalid_option"),
        (
            {"hypernetwork": {"weight_initialization": "Zeros"}},
            "/hypernetwork/weight_initialization",
            "invalid_option",
        ),
        ({"hypernetwork": {"enable_sizes": [0]}}, "/hypernetwork/enable_sizes", "invalid_option"),
        (
            {"hypernetwork": {"dropout_structure": [0, 0.3]}},
            "/hypernetwork/dropout_structure",
            "invalid_option",
        ),
        (
            {"hypernetwork": {"dropout_structure": [0, 1.0, 0]}},
            "/hypernetwork/dropout_structure",
            "invalid_option",
        ),
    ],
)
def test_each_bad_value_has_its_pointer_and_code(data: dict[str, Any], pointer: str, code: str) -> None:
    errors = _errors(data)
    assert {"pointer": pointer, "code": code} in [
        {"pointer": e["pointer"], "code": e["code"]} for e in errors
    ]
    assert all(e["detail"] for e in errors)


@pytest.mark.parametrize("name", ["", "a/b", "a\\b", "..", ".hidden", "x" * 65, " pad", "a:b", "nul\x00"])
def test_unsafe_names_are_refused(name: str) -> None:
    error = _errors({"name": name})[0]
    assert (error["pointer"], error["code"]) == ("/name", "invalid_name")


def test_every_problem_is_reported_at_once() -> None:
    errors = _errors({"name": "a/b", "training": {"steps": 0, "extra": 1}})
    assert {e["pointer"] for e in errors} == {"/name", "/training/steps", "/training/extra"}


def test_not_an_object() -> None:
    assert _errors([])[0]["code"] == "invalid_type"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("arch", "sizes"),
    [("sd1", (768, 320, 640, 1280)), ("sd2", (1024, 320, 640, 1280)), ("sdxl", (640, 1280, 2048))],
)
def test_resolve_fills_the_architecture_widths(arch: str, sizes: tuple[int, ...]) -> None:
    assert resolve_spec(parse_spec({}), arch).hypernetwork.enable_sizes == sizes
    given = parse_spec({"hypernetwork": {"enable_sizes": [320]}})
    assert resolve_spec(given, arch).hypernetwork.enable_sizes == (320,)


def test_resolve_refuses_an_unknown_architecture() -> None:
    with pytest.raises(InvalidOptionError, match="architecture"):
        resolve_spec(parse_spec({}), "sd3")


def test_warnings() -> None:
    assert spec_warnings(parse_spec({})) == []
    loud = parse_spec(
        {
            "training": {"learn_rate": "1e-3:10, 1e-6", "steps": 60000},
            "hypernetwork": {"is_layer_norm": True, "activation_func": "relu", "activate_output": False},
        }
    )
    text = " | ".join(spec_warnings(loud))
    assert "learning rate 0.001" in text
    assert "60000 steps" in text
    assert "ComfyUI" in text
    ends_early = parse_spec({"training": {"learn_rate": "1e-5:1000", "steps": 5000}})
    assert any("ends at step 1000" in w for w in spec_warnings(ends_early))


def test_estimate_sizes_match_the_format_spec() -> None:
    result = estimate(parse_spec({"training": {"learn_rate": "1e-5:1000", "steps": 5000}}), "sd1")
    # [1,2,1] over 768/320/640/1280: 21,939,840 parameters, 87,770,729 bytes (within 0.01%)
    assert abs(result["hypernetwork_bytes"] - 87_770_729) <= 87_770_729 * 1e-4
    assert result["optimizer_bytes"] == 2 * 4 * 21_939_840
    assert result["steps"] == 1000
    assert result["seconds"] > 0
    sd2 = estimate(parse_spec({}), "sd2")
    assert sd2["hypernetwork_bytes"] > result["hypernetwork_bytes"]  # 1024 instead of 768


def test_spec_module_does_not_import_torch() -> None:
    code = "import sys, core.spec; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
