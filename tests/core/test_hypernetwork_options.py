"""HypernetworkOptions: validation, dropout derivation, layouts and size arithmetic (torch-free)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from core.errors import InvalidOptionError
from core.hypernetwork.options import (
    ALLOWED_ACTIVATIONS,
    ALLOWED_INITIALIZATIONS,
    DEFAULT_ENABLE_SIZES,
    HypernetworkOptions,
    dropout_structure_for,
    validate_name,
)


def test_options_module_does_not_import_torch():
    code = (
        "import sys, core.hypernetwork, core.hypernetwork.options as o;"
        "o.HypernetworkOptions.create().estimated_file_bytes();"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_defaults_are_a1111_defaults():
    opts = HypernetworkOptions.create()
    assert opts.layer_structure == (1.0, 2.0, 1.0)
    assert all(type(x) is float for x in opts.layer_structure)
    assert opts.activation_func == "linear"
    assert opts.weight_initialization == "Normal"
    assert opts.is_layer_norm is False
    assert opts.activate_output is False
    assert opts.dropout_structure == (0.0, 0.0, 0.0)
    assert opts.use_dropout is False and opts.last_layer_dropout is False
    assert opts.enable_sizes == DEFAULT_ENABLE_SIZES == (768, 320, 640, 1280)


def test_allowed_sets_are_what_both_programs_accept():
    assert {
        "linear",
        "relu",
        "leakyrelu",
        "elu",
        "swish",
        "tanh",
        "sigmoid",
        "softsign",
        "mish",
    } == ALLOWED_ACTIVATIONS
    assert {
        "Normal",
        "XavierUniform",
        "XavierNormal",
        "KaimingUniform",
        "KaimingNormal",
    } == ALLOWED_INITIALIZATIONS


@pytest.mark.parametrize(
    ("structure", "use_dropout", "last", "expected"),
    [
        ((1, 2, 1), False, False, (0, 0, 0)),
        ((1, 2, 1), True, False, (0, 0, 0)),
        ((1, 2, 1), True, True, (0, 0.3, 0)),
        ((1, 2, 1), False, True, (0, 0, 0)),
        ((1, 2, 2, 1), True, False, (0, 0.3, 0, 0)),
        ((1, 2, 2, 1), True, True, (0, 0.3, 0.3, 0)),
        ((1, 2, 2, 1), False, True, (0, 0, 0, 0)),
        ((1, 2, 4, 2, 1), True, False, (0, 0.3, 0.3, 0, 0)),
        ((1, 2, 4, 2, 1), True, True, (0, 0.3, 0.3, 0.3, 0)),
        # A1111's parse_dropout_structure gives [0, 0.3, 0] here (three entries, a Dropout on the
        # output, identity in eval); we keep one entry per multiplier and never drop the output.
        ((1, 1), True, True, (0, 0)),
    ],
)
def test_dropout_derivation_table(structure, use_dropout, last, expected):
    assert dropout_structure_for(structure, use_dropout, last) == tuple(float(x) for x in expected)
    opts = HypernetworkOptions.create(
        layer_structure=structure, use_dropout=use_dropout, last_layer_dropout=last
    )
    assert opts.dropout_structure == tuple(float(x) for x in expected)
    assert opts.use_dropout == any(expected)
    assert opts.last_layer_dropout == (expected[-2] != 0)


def test_explicit_dropout_structure_decides_the_flags():
    opts = HypernetworkOptions.create(layer_structure=(1, 2, 2, 1), dropout_structure=(0, 0.1, 0.25, 0))
    assert opts.dropout_structure == (0.0, 0.1, 0.25, 0.0)
    assert opts.use_dropout and opts.last_layer_dropout
    zero = HypernetworkOptions.create(layer_structure=(1, 2, 1), dropout_structure=(0, 0, 0))
    assert not zero.use_dropout


def test_float_structure_truncates_like_int():
    opts = HypernetworkOptions.create(layer_structure=(1, 1.33, 1), enable_sizes=(320, 768))
    assert opts.layer_dims(320) == (320, 425, 320)
    assert opts.layer_dims(768) == (768, 1021, 768)
    assert opts.state_dict_shapes(320)["linear.0.weight"] == (425, 320)


def test_spec_example_keys_relu_layer_norm():
    opts = HypernetworkOptions.create(activation_func="relu", is_layer_norm=True, enable_sizes=(8,))
    kinds = [layer.kind for layer in opts.sequential_layout(8)]
    assert kinds == ["linear", "activation", "layer_norm", "linear", "layer_norm"]
    assert list(opts.state_dict_shapes(8)) == [
        "linear.0.weight",
        "linear.0.bias",
        "linear.2.weight",
        "linear.2.bias",
        "linear.3.weight",
        "linear.3.bias",
        "linear.4.weight",
        "linear.4.bias",
    ]


def test_parameter_counts_match_the_spec():
    assert HypernetworkOptions.create().parameter_count() == 21_939_840
    assert HypernetworkOptions.create(layer_structure=(1, 2, 2, 1)).parameter_count() == 43_873_664
    for d in (8, 320, 1024):
        assert HypernetworkOptions.create(enable_sizes=(d,)).parameter_count() == 8 * d * d + 6 * d
    with_norm = HypernetworkOptions.create(is_layer_norm=True, enable_sizes=(8,))
    assert with_norm.parameter_count() == 8 * 64 + 6 * 8 + 2 * (2 * 16 + 2 * 8)


def test_estimated_size_of_the_spec_file():
    estimate = HypernetworkOptions.create().estimated_file_bytes(name="hypernetwork")
    assert abs(estimate - 87_770_729) / 87_770_729 < 1e-4


def test_release_removes_dropout_only():
    opts = HypernetworkOptions.create(
        layer_structure=(1, 2, 2, 1), activation_func="elu", use_dropout=True, last_layer_dropout=True
    )
    rel = opts.release()
    assert rel.dropout_structure == (0.0, 0.0, 0.0, 0.0) and not rel.use_dropout
    assert (rel.layer_structure, rel.activation_func, rel.enable_sizes) == (
        opts.layer_structure,
        opts.activation_func,
        opts.enable_sizes,
    )
    assert all(layer.kind != "dropout" for layer in rel.sequential_layout(8))
    assert rel.parameter_count() == opts.parameter_count()


@pytest.mark.parametrize(
    ("value", "expected"), [(None, "linear"), ("none", "linear"), ("None", "linear"), ("ReLU", "relu")]
)
def test_activation_names_are_normalised(value, expected):
    assert HypernetworkOptions.create(activation_func=value).activation_func == expected


def test_initialization_names_are_normalised():
    assert (
        HypernetworkOptions.create(weight_initialization="xavieruniform").weight_initialization
        == "XavierUniform"
    )


@pytest.mark.parametrize(
    ("kwargs", "option", "fragment"),
    [
        ({"layer_structure": (2, 2, 1)}, "layer_structure", "first and last"),
        ({"layer_structure": (1, 2, 1.5)}, "layer_structure", "first and last"),
        ({"layer_structure": (1, 0, 1)}, "layer_structure", "> 0"),
        ({"layer_structure": (1, -2, 1)}, "layer_structure", "> 0"),
        ({"layer_structure": (1,)}, "layer_structure", "multipliers"),
        ({"layer_structure": "1,2,1"}, "layer_structure", "multipliers"),
        ({"layer_structure": (1, float("nan"), 1)}, "layer_structure", "> 0"),
        ({"layer_structure": (1, True, 1)}, "layer_structure", "multipliers"),
        ({"layer_structure": (1, 0.01, 1), "enable_sizes": (8,)}, "layer_structure", "truncates to 0"),
        ({"activation_func": "gelu"}, "activation_func", "softsign"),
        ({"activation_func": "silu"}, "activation_func", "swish"),
        ({"activation_func": 3}, "activation_func", "relu"),
        ({"weight_initialization": "Uniform"}, "weight_initialization", "KaimingNormal"),
        ({"is_layer_norm": 1}, "is_layer_norm", "true or false"),
        ({"activate_output": "yes"}, "activate_output", "true or false"),
        ({"use_dropout": None}, "use_dropout", "true or false"),
        ({"dropout_structure": (0, 0.3)}, "dropout_structure", "3 rates"),
        ({"dropout_structure": (0, 1.0, 0)}, "dropout_structure", "[0, 1)"),
        ({"dropout_structure": (0, -0.1, 0)}, "dropout_structure", "[0, 1)"),
        ({"dropout_structure": (0, 0.3, 0.3)}, "dropout_structure", "last entries must be 0"),
        ({"dropout_structure": (0.2, 0, 0)}, "dropout_structure", "first and last"),
        ({"dropout_structure": (0, 0, 0), "use_dropout": True}, "use_dropout", "all zeros"),
        ({"dropout_structure": (0, 0, 0), "last_layer_dropout": True}, "last_layer_dropout", "0 before"),
        ({"enable_sizes": ()}, "enable_sizes", "non-empty"),
        ({"enable_sizes": (768, 768)}, "enable_sizes", "repeats"),
        ({"enable_sizes": (768, 0)}, "enable_sizes", "positive integer"),
        ({"enable_sizes": (768.0,)}, "enable_sizes", "positive integer"),
        ({"enable_sizes": ("768",)}, "enable_sizes", "positive integer"),
    ],
)
def test_bad_options_name_the_option_and_the_allowed_values(kwargs, option, fragment):
    with pytest.raises(InvalidOptionError) as info:
        HypernetworkOptions.create(**kwargs)
    assert info.value.option == option
    assert info.value.code == "invalid_option"
    assert str(info.value).startswith(option)
    assert fragment in str(info.value)


def test_direct_construction_is_validated_too():
    good = HypernetworkOptions.create()
    with pytest.raises(InvalidOptionError) as info:
        HypernetworkOptions(
            layer_structure=(1, 2, 1),  # ints, not the canonical floats
            activation_func="linear",
            weight_initialization="Normal",
            is_layer_norm=False,
            dropout_structure=good.dropout_structure,
            activate_output=False,
            enable_sizes=good.enable_sizes,
        )
    assert info.value.option == "layer_structure"
    with pytest.raises(InvalidOptionError):
        HypernetworkOptions(**{**good.__dict__, "activation_func": "ReLU"})


def test_warnings():
    assert HypernetworkOptions.create(activation_func="relu").warnings() == []
    mismatch = HypernetworkOptions.create(activation_func="relu", is_layer_norm=True)
    assert any("ComfyUI" in w for w in mismatch.warnings())
    assert (
        HypernetworkOptions.create(
            activation_func="relu", is_layer_norm=True, activate_output=True
        ).warnings()
        == []
    )
    assert HypernetworkOptions.create(activation_func="linear", is_layer_norm=True).warnings() == []
    odd = HypernetworkOptions.create(enable_sizes=(768, 100))
    assert any("[100]" in w for w in odd.warnings())


@pytest.mark.parametrize("name", ["", "  ", "a/b", "a\\b", "..", "x\n", 5])
def test_bad_names_are_refused(name):
    with pytest.raises(InvalidOptionError) as info:
        validate_name(name)
    assert info.value.option == "name"


def test_good_name_is_returned():
    assert validate_name("my style-v2") == "my style-v2"
