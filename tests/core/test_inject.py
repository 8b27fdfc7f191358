"""Hypernetworks through attention processors: parity with stock, gradients, detach, stacking."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.hypernetwork.module import Hypernetwork
from core.hypernetwork.options import HypernetworkOptions
from core.inject import HypernetworkAttnProcessor, attach
from core.models import TINY_WIDTHS, BaseModel, load_base_model

ARCHES = ("sd1", "sd2", "sdxl")


@pytest.fixture(scope="module")
def models(tiny_sd1: Path, tiny_sd2: Path, tiny_sdxl: Path) -> dict[str, BaseModel]:
    """Loaded once per module: tests only attach and detach, never change the weights."""
    return {
        arch: load_base_model(path)
        for arch, path in zip(ARCHES, (tiny_sd1, tiny_sd2, tiny_sdxl), strict=True)
    }


def _network(widths: Sequence[int], seed: int = 0, name: str = "hn") -> Hypernetwork:
    options = HypernetworkOptions.create(
        layer_structure=(1, 2, 1), activation_func="relu", enable_sizes=widths
    )
    return Hypernetwork.new(name, options, seed=seed)


def _zero_residual(network: Hypernetwork) -> Hypernetwork:
    """Zero every module's last Linear: each module then returns its input exactly."""
    with torch.no_grad():
        for width in network.widths():
            pair = network.modules_for(width)
            assert pair is not None
            for module in pair:
                last = [layer for layer in module.linear if isinstance(layer, nn.Linear)][-1]
                last.weight.zero_()
                last.bias.zero_()
    return network


def _forward(model: BaseModel) -> torch.Tensor:
    """UNet output [2, 4, 8, 8] for fixed latents, timesteps and prompts."""
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    cond = model.encode_prompts(["a photo of a cat", "a watercolor of a harbour"])
    return model.unet(latents, torch.tensor([50, 900]), **model.unet_kwargs(cond, 64, 64)).sample


@pytest.mark.parametrize("arch", ARCHES)
def test_zero_residual_is_bit_identical_and_nonzero_differs(models: dict[str, BaseModel], arch: str) -> None:
    model = models[arch]
    stock = _forward(model)
    with attach(model.unet, [_zero_residual(_network(TINY_WIDTHS[arch]))]):
        assert torch.equal(_forward(model), stock)
    with attach(model.unet, [_network(TINY_WIDTHS[arch])]):
        changed = _forward(model)
    assert (changed - stock).abs().max() > 1e-6
    assert torch.equal(_forward(model), stock)  # detached: stock again


@pytest.mark.parametrize("arch", ARCHES)
def test_gradients_reach_only_the_hypernetwork(models: dict[str, BaseModel], arch: str) -> None:
    model = models[arch]
    network = _network(TINY_WIDTHS[arch]).train()
    with attach(model.unet, [network]):
        _forward(model).square().mean().backward()
    # Every width of TINY_WIDTHS is used by some attention layer, k and v alike.
    for name, param in network.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(p.grad is None and not p.requires_grad for p in model.unet.parameters())


def test_detach_restores_the_original_processor_objects(models: dict[str, BaseModel]) -> None:
    unet = models["sd1"].unet
    originals = dict(unet.attn_processors)
    n_params = len(list(unet.parameters()))
    with (
        pytest.raises(RuntimeError, match="boom"),
        attach(unet, [_network(TINY_WIDTHS["sd1"])]) as attachment,
    ):
        assert attachment.attached
        assert all(isinstance(p, HypernetworkAttnProcessor) for p in unet.attn_processors.values())
        assert len(list(unet.parameters())) == n_params  # the networks stay outside the UNet
        raise RuntimeError("boom")
    assert not attachment.attached
    assert unet.attn_processors.keys() == originals.keys()
    assert all(unet.attn_processors[name] is proc for name, proc in originals.items())
    attachment.detach()  # idempotent
    assert all(unet.attn_processors[name] is proc for name, proc in originals.items())


def test_strength_and_stack_change_without_reattaching(models: dict[str, BaseModel]) -> None:
    model = models["sd2"]
    stock = _forward(model)
    network = _network(TINY_WIDTHS["sd2"])  # eval mode: strength applies
    with attach(model.unet, []) as attachment:
        assert torch.equal(_forward(model), stock)
        attachment.set_stack([network])
        full = _forward(model)
        assert not torch.equal(full, stock)
        network.strength = 0.0
        assert torch.equal(_forward(model), stock)
        network.strength = 0.5
        half = _forward(model)
        # A residual scaled by 0.5 moves the output part of the way.
        assert 0 < (half - stock).abs().max() < (full - stock).abs().max()
        attachment.detach()
        assert torch.equal(_forward(model), stock)
        attachment.reattach()
        assert torch.equal(_forward(model), half)


def test_two_networks_stack_in_order(models: dict[str, BaseModel]) -> None:
    model = models["sdxl"]
    first, second = _network(TINY_WIDTHS["sdxl"], seed=1), _network(TINY_WIDTHS["sdxl"], seed=2)
    with attach(model.unet, [first]):
        only_first = _forward(model)
    with attach(model.unet, [first, second]):
        both = _forward(model)
    assert not torch.equal(both, only_first)
    with attach(model.unet, [first, _zero_residual(second)]):
        assert torch.equal(_forward(model), only_first)


def test_widths_without_modules_pass_through(models: dict[str, BaseModel]) -> None:
    model = models["sd1"]
    stock = _forward(model)
    with attach(model.unet, [_network((768, 1280))]):  # SD1.5 widths: none occurs in the tiny UNet
        assert torch.equal(_forward(model), stock)
    text, *blocks = TINY_WIDTHS["sd1"]
    for widths in ((text,), tuple(blocks)):  # cross-attention only, then self-attention only
        with attach(model.unet, [_network(widths)]):
            assert not torch.equal(_forward(model), stock)


def test_processor_feeds_k_and_v_their_own_modules(models: dict[str, BaseModel]) -> None:
    """On one cross-attention layer: k from the k module, v from the v module, Q and output as stock."""
    model = models["sd1"]
    attn = model.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    network = _network(TINY_WIDTHS["sd1"])
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 64, 32, generator=generator)  # (B, H*W, C) at 8x8, width 32
    context = torch.randn(2, 77, 48, generator=generator)  # text states, width 48
    got = HypernetworkAttnProcessor([network])(attn, hidden, encoder_hidden_states=context)
    pair = network.modules_for(48)
    assert pair is not None
    kmod, vmod = pair

    def heads(x: torch.Tensor) -> torch.Tensor:  # (B, L, C) -> (B, heads, L, C/heads)
        return x.view(2, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

    with torch.no_grad():
        q, k, v = attn.to_q(hidden), attn.to_k(kmod(context)), attn.to_v(vmod(context))
        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v)).transpose(1, 2).reshape(2, 64, -1)
        expected = attn.to_out[0](out)
    torch.testing.assert_close(got, expected)
    swapped = attn.to_out[0](
        F.scaled_dot_product_attention(
            heads(q), heads(attn.to_k(vmod(context))), heads(attn.to_v(kmod(context)))
        )
        .transpose(1, 2)
        .reshape(2, 64, -1)
    )
    assert not torch.allclose(got, swapped)


def test_text_context_reuse_never_goes_stale(models: dict[str, BaseModel]) -> None:
    """The text-width pair is reused only within one forward: an in-place weight update shows next time."""
    model = models["sd1"]
    network = _network(TINY_WIDTHS["sd1"])
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    cond = model.encode_prompts(["a cat"])
    kwargs = model.unet_kwargs(cond, 64, 64)  # the same text tensor object every call
    with attach(model.unet, [network]):
        before = model.unet(latents, torch.tensor([10]), **kwargs).sample
        with torch.no_grad():  # an optimizer step between forwards, in place
            for param in network.parameters():
                param.add_(0.01)
        after = model.unet(latents, torch.tensor([10]), **kwargs).sample
    fresh_network = _network(TINY_WIDTHS["sd1"])
    with torch.no_grad():
        for param in fresh_network.parameters():
            param.add_(0.01)
    with attach(model.unet, [fresh_network]):
        expected = model.unet(latents, torch.tensor([10]), **kwargs).sample
    assert not torch.equal(before, after) and torch.equal(after, expected)


def test_gradients_equal_with_gradient_checkpointing(tiny_sd1: Path) -> None:
    """Checkpointing recomputes every layer (no reuse); the gradients must be those of a plain forward."""
    model = load_base_model(tiny_sd1)  # its own copy: checkpointing is switched on below
    grads = []
    for checkpointing in (False, True):
        network = _network(TINY_WIDTHS["sd1"]).train()
        if checkpointing:
            model.unet.enable_gradient_checkpointing()
            model.unet.train()
        with attach(model.unet, [network]):
            _forward(model).square().mean().backward()
        grads.append([p.grad for p in network.parameters()])
    for plain, checkpointed in zip(*grads, strict=True):
        assert plain is not None and checkpointed is not None
        torch.testing.assert_close(plain, checkpointed)


def _text_module_calls(model: BaseModel, network: Hypernetwork) -> int:
    """How many times the text-width k module runs in one UNet forward."""
    text_width = model.unet.config.cross_attention_dim
    pair = network.modules_for(text_width)
    assert pair is not None
    calls = 0

    def count(module: nn.Module, args: object, output: object) -> None:
        nonlocal calls
        calls += 1

    handle = pair[0].register_forward_hook(count)
    try:
        with attach(model.unet, [network]), torch.no_grad():
            _forward(model)
    finally:
        handle.remove()
    return calls


def test_text_context_is_shared_across_layers_unless_dropout_is_active(models: dict[str, BaseModel]) -> None:
    """Eval (or no dropout): one text-width pass per forward; training dropout: one per layer."""
    model = models["sd1"]
    cross_layers = sum(1 for name in model.unet.attn_processors if name.endswith("attn2.processor"))
    plain = _network(TINY_WIDTHS["sd1"]).train()
    assert _text_module_calls(model, plain) == 1
    options = HypernetworkOptions.create(
        layer_structure=(1, 2, 2, 1), use_dropout=True, enable_sizes=TINY_WIDTHS["sd1"]
    )
    dropout = Hypernetwork.new("hn", options, seed=0)
    assert _text_module_calls(model, dropout.eval()) == 1
    assert _text_module_calls(model, dropout.train()) == cross_layers > 1
