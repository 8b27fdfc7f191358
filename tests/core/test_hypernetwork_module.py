"""HypernetworkModule / Hypernetwork: A1111's layout, initialisation, forward and stacking."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from core.hypernetwork.module import Hypernetwork, HypernetworkModule, apply_hypernetworks
from core.hypernetwork.options import HypernetworkOptions


def opts(**kwargs) -> HypernetworkOptions:
    kwargs.setdefault("enable_sizes", (16, 8))
    return HypernetworkOptions.create(**kwargs)


def keys_of(options: HypernetworkOptions, width: int = 8) -> list[int]:
    """Sequential positions that carry parameters, from a real module's state dict."""
    module = HypernetworkModule(width, options)
    return sorted({int(key.split(".")[1]) for key in module.state_dict()})


@pytest.mark.parametrize(
    ("kwargs", "positions", "layers"),
    [
        ({}, [0, 1], "Linear Linear"),
        (
            {"activation_func": "relu", "is_layer_norm": True},
            [0, 2, 3, 4],
            "Linear ReLU LayerNorm Linear LayerNorm",
        ),
        (
            {"activation_func": "relu", "is_layer_norm": True, "activate_output": True},
            [0, 2, 3, 5],
            "Linear ReLU LayerNorm Linear ReLU LayerNorm",
        ),
        ({"activation_func": "relu", "use_dropout": True}, [0, 2], "Linear ReLU Linear"),
        (
            {"activation_func": "relu", "use_dropout": True, "last_layer_dropout": True},
            [0, 3],
            "Linear ReLU Dropout Linear",
        ),
        (
            {"layer_structure": (1, 2, 2, 1), "activation_func": "relu", "use_dropout": True},
            [0, 3, 5],
            "Linear ReLU Dropout Linear ReLU Linear",
        ),
        (
            {
                "layer_structure": (1, 2, 2, 1),
                "activation_func": "relu",
                "use_dropout": True,
                "last_layer_dropout": True,
            },
            [0, 3, 6],
            "Linear ReLU Dropout Linear ReLU Dropout Linear",
        ),
        (
            {
                "layer_structure": (1, 2, 2, 1),
                "activation_func": "tanh",
                "is_layer_norm": True,
                "dropout_structure": (0, 0.1, 0.2, 0),
            },
            [0, 2, 4, 6, 8, 9],
            "Linear Tanh LayerNorm Dropout Linear Tanh LayerNorm Dropout Linear LayerNorm",
        ),
        (
            {"layer_structure": (1, 2, 2, 1), "is_layer_norm": True, "use_dropout": True},
            [0, 1, 3, 4, 5, 6],
            "Linear LayerNorm Dropout Linear LayerNorm Linear LayerNorm",
        ),
    ],
)
def test_golden_layouts(kwargs, positions, layers):
    options = opts(**kwargs)
    module = HypernetworkModule(8, options)
    assert " ".join(type(layer).__name__ for layer in module.linear) == layers
    assert keys_of(options) == positions
    # The torch-free layout agrees with the real module, key for key and shape for shape.
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == options.state_dict_shapes(8)
    assert list(module.state_dict()) == list(options.state_dict_shapes(8))


def test_dropout_rates_follow_the_structure():
    module = HypernetworkModule(8, opts(layer_structure=(1, 2, 2, 1), dropout_structure=(0, 0.1, 0.2, 0)))
    assert [layer.p for layer in module.linear if isinstance(layer, nn.Dropout)] == [0.1, 0.2]


def test_float_structure_shapes():
    module = HypernetworkModule(320, opts(layer_structure=(1, 1.33, 1), enable_sizes=(320,)))
    assert module.linear[0].weight.shape == (425, 320)
    assert module.linear[1].weight.shape == (320, 425)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("relu", nn.ReLU),
        ("leakyrelu", nn.LeakyReLU),
        ("elu", nn.ELU),
        ("swish", nn.Hardswish),
        ("tanh", nn.Tanh),
        ("sigmoid", nn.Sigmoid),
        ("softsign", nn.Softsign),
        ("mish", nn.Mish),
    ],
)
def test_activation_classes(name, cls):
    module = HypernetworkModule(8, opts(activation_func=name))
    assert type(module.linear[1]) is cls
    # Not after the last Linear unless activate_output.
    assert type(module.linear[-1]) is nn.Linear
    with_output = HypernetworkModule(8, opts(activation_func=name, activate_output=True))
    assert type(with_output.linear[-1]) is cls


def test_swish_is_hardswish_not_silu():
    module = HypernetworkModule(8, opts(activation_func="swish"))
    assert not isinstance(module.linear[1], nn.SiLU)


def _weights(init: str, activation: str = "linear", width: int = 64):
    module = HypernetworkModule(
        width,
        opts(weight_initialization=init, activation_func=activation, enable_sizes=(width,)),
        generator=torch.Generator().manual_seed(0),
    )
    first = module.linear[0]
    return first.weight.detach(), first.bias.detach()


def test_normal_init():
    w, b = _weights("Normal")
    assert abs(w.mean().item()) < 0.001
    assert w.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.all(b == 0)


def test_xavier_uniform_init():
    w, b = _weights("XavierUniform")
    bound = math.sqrt(6 / (64 + 128))
    assert w.abs().max().item() <= bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert torch.all(b == 0)


def test_xavier_normal_init():
    w, b = _weights("XavierNormal")
    assert w.std().item() == pytest.approx(math.sqrt(2 / (64 + 128)), rel=0.05)
    assert torch.all(b == 0)


@pytest.mark.parametrize("activation", ["relu", "leakyrelu"])
def test_kaiming_inits_use_fan_in(activation):
    # A1111 passes no negative slope, so leaky_relu's gain is relu's: sqrt(2).
    w, b = _weights("KaimingUniform", activation)
    bound = math.sqrt(6 / 64)
    assert w.abs().max().item() <= bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert torch.all(b == 0)
    w, b = _weights("KaimingNormal", activation)
    assert w.std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.05)
    assert torch.all(b == 0)


@pytest.mark.parametrize("init", ["Normal", "XavierUniform", "KaimingNormal"])
def test_layer_norm_init_is_near_zero_whatever_the_option(init):
    module = HypernetworkModule(64, opts(weight_initialization=init, is_layer_norm=True, enable_sizes=(64,)))
    norms = [layer for layer in module.linear if isinstance(layer, nn.LayerNorm)]
    assert len(norms) == 2
    weights = torch.cat([n.weight.detach() for n in norms])
    assert weights.std().item() == pytest.approx(0.01, rel=0.2)
    assert abs(weights.mean().item()) < 0.005
    assert all(torch.all(n.bias == 0) for n in norms)


def test_seed_makes_weights_reproducible():
    a = Hypernetwork.new("a", opts(), seed=7)
    b = Hypernetwork.new("b", opts(), seed=7)
    c = Hypernetwork.new("c", opts(), seed=8)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))


def test_forward_is_residual_with_multiplier_in_eval_only():
    torch.manual_seed(0)
    module = HypernetworkModule(8, opts(weight_initialization="XavierNormal"))
    x = torch.randn(2, 3, 8)
    delta = module.linear(x)
    module.eval()
    assert torch.allclose(module(x, 0.5), x + 0.5 * delta)
    assert torch.allclose(module(x), x + delta)
    module.train()
    assert torch.allclose(module(x, 0.5), x + delta)


def test_hypernetwork_structure_and_fields():
    hn = Hypernetwork.new("net", opts())
    assert (hn.name, hn.step, hn.strength) == ("net", 0, 1.0)
    assert hn.sd_checkpoint is None and hn.sd_checkpoint_name is None and hn.optional_info is None
    assert hn.widths() == (16, 8)
    assert not hn.training  # new networks are ready for inference
    pair = hn.modules_for(16)
    assert pair is not None and pair[0] is not pair[1] and pair[0].width == 16
    assert hn.modules_for(768) is None
    hn.train()
    assert all(m.training for m in hn.modules())
    hn.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in hn.parameters())


def test_parameters_in_a1111_order():
    hn = Hypernetwork.new("net", opts(is_layer_norm=True))
    expected = []
    for width in (16, 8):
        k, v = hn.modules_for(width)
        for module in (k, v):
            for index, layer in enumerate(module.linear):
                if isinstance(layer, nn.Linear | nn.LayerNorm):
                    expected += [module.linear[index].weight, module.linear[index].bias]
    got = hn.parameters_in_a1111_order()
    assert len(got) == len(expected) and all(a is b for a, b in zip(got, expected, strict=True))
    assert sum(p.numel() for p in got) == hn.options.parameter_count()
    assert {id(p) for p in got} == {id(p) for p in hn.parameters()}


def _manual(hn: Hypernetwork, x: torch.Tensor, which: int) -> torch.Tensor:
    module = hn.modules_for(x.shape[-1])[which]
    return x + module.linear(x) * hn.strength


def test_apply_hypernetworks_strength_and_order():
    torch.manual_seed(0)
    a = Hypernetwork.new("a", opts(weight_initialization="XavierNormal", activation_func="tanh"), seed=1)
    b = Hypernetwork.new("b", opts(weight_initialization="XavierNormal", activation_func="tanh"), seed=2)
    a.strength, b.strength = 0.7, 1.5
    ctx = torch.randn(2, 5, 8)
    with torch.no_grad():
        k, v = apply_hypernetworks(ctx, [a, b])
        assert torch.allclose(k, _manual(b, _manual(a, ctx, 0), 0), atol=1e-6)
        assert torch.allclose(v, _manual(b, _manual(a, ctx, 1), 1), atol=1e-6)
        swapped, _ = apply_hypernetworks(ctx, [b, a])
        assert not torch.allclose(k, swapped, atol=1e-4)  # stacking is sequential, not commutative
        k1, _ = apply_hypernetworks(ctx, [a])
        assert torch.allclose(k1, _manual(a, ctx, 0), atol=1e-6)


def test_apply_hypernetworks_passes_unknown_widths_through():
    hn = Hypernetwork.new("a", opts())
    ctx = torch.randn(1, 4, 12)
    k, v = apply_hypernetworks(ctx, [hn])
    assert k is ctx and v is ctx
    k, v = apply_hypernetworks(ctx, [])
    assert k is ctx and v is ctx


def test_apply_hypernetworks_training_forces_strength_one():
    hn = Hypernetwork.new("a", opts(weight_initialization="XavierNormal"), seed=3)
    hn.strength = 0.25
    ctx = torch.randn(1, 4, 8)
    hn.train()
    k, _ = apply_hypernetworks(ctx, [hn])
    expected = ctx + hn.modules_for(8)[0].linear(ctx)
    assert torch.allclose(k, expected, atol=1e-6)
    assert k.requires_grad


def test_apply_hypernetworks_casts_to_module_dtype_and_back():
    hn = Hypernetwork.new("a", opts(weight_initialization="XavierNormal"), seed=4)
    ctx = torch.randn(1, 4, 8, dtype=torch.bfloat16)
    k, v = apply_hypernetworks(ctx, [hn])
    assert k.dtype == torch.bfloat16 and v.dtype == torch.bfloat16
    expected = _manual(hn, ctx.float(), 0).to(torch.bfloat16)
    assert torch.equal(k, expected)
