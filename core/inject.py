"""Hypernetworks applied through diffusers' attention-processor extension point.

A1111 replaces each attention layer's context by ``(k_in, v_in)`` before the K and V
projections (spec section 1). diffusers lets us do exactly that without touching any
``forward``: ``HypernetworkAttnProcessor`` is ``AttnProcessor2_0`` (scaled dot-product
attention) with the context passed through ``apply_hypernetworks`` first. Q, the
attention itself and the output projection are untouched, so with no module for a
width, or a zero residual, the output is bit-identical to the stock processor's.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttentionProcessor
from torch import nn
from torch.utils.hooks import RemovableHandle

from core.hypernetwork.module import Hypernetwork, apply_hypernetworks


class HypernetworkAttnProcessor:
    """``AttnProcessor2_0`` whose key/value inputs go through a hypernetwork stack.

    Not an ``nn.Module``: the hypernetworks' parameters must not become the UNet's
    (its ``state_dict``, ``requires_grad_`` and ``.to()`` must not reach them).
    One instance serves every attention layer; ``stack`` is read at each call, so
    changing it (or a network's ``strength``) takes effect without re-attaching.

    Every cross-attention layer of one UNet forward gets the same text states and the
    same width's modules, hence the same (k_in, v_in): within a forward (between
    ``begin_forward`` and ``end_forward``) the pair is computed once and reused, which
    saves 15 of SD1.5's 16 text-width MLP passes. Not under gradient checkpointing,
    whose recomputation must redo every operation, nor while dropout is active.
    """

    def __init__(self, stack: list[Hypernetwork]) -> None:
        self.stack = stack
        self._reuse = False
        self._cached: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (text, k_in, v_in)

    def begin_forward(self, reuse_text_context: bool) -> None:
        """Start a UNet forward: forget the previous pair; reuse within this forward if allowed."""
        self._cached = None
        self._reuse = reuse_text_context

    def end_forward(self) -> None:
        """End a UNet forward: drop the cached pair (it belongs to this forward's graph)."""
        self._cached = None
        self._reuse = False

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Attend as AttnProcessor2_0 does, with k/v inputs from ``apply_hypernetworks``."""
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:  # (B, C, H, W) -> (B, H*W, C)
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        context_shape = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        batch_size, sequence_length = context_shape[0], context_shape[1]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            # SDPA wants the mask as (B, heads, query_len, key_len).
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)

        # The context: the normed hidden state (self-attention, attn1) or the text states
        # (cross-attention, attn2): (B, L, d). The hypernetwork of width d turns it into k/v inputs.
        if encoder_hidden_states is None:
            context = hidden_states
        elif attn.norm_cross:
            context = attn.norm_encoder_hidden_states(encoder_hidden_states)
        else:
            context = encoder_hidden_states
        if not self.stack:
            k_context = v_context = context
        elif self._reuse and encoder_hidden_states is not None:
            cached = self._cached
            if cached is not None and cached[0] is context:
                k_context, v_context = cached[1], cached[2]
            else:
                k_context, v_context = apply_hypernetworks(context, self.stack)
                self._cached = (context, k_context, v_context)
        else:
            k_context, v_context = apply_hypernetworks(context, self.stack)
        key = attn.to_k(k_context)
        value = attn.to_v(v_context)

        # (B, L, heads*head_dim) -> (B, heads, L, head_dim)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)  # output projection
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class Attachment:
    """Hypernetworks attached to a UNet; a context manager whose exit (or ``detach``) restores it."""

    def __init__(self, unet: UNet2DConditionModel, stack: Iterable[Hypernetwork]) -> None:
        self.unet = unet
        # diffusers adds attn_processors/set_attn_processor through an untyped mixin.
        self._target: Any = unet
        # One list shared with the processor: set_stack() edits it in place.
        self.stack: list[Hypernetwork] = list(stack)
        self.processor = HypernetworkAttnProcessor(self.stack)
        self._originals: dict[str, AttentionProcessor] = {}
        self._hooks: list[RemovableHandle] = []
        self._attached = False
        self.reattach()

    @property
    def attached(self) -> bool:
        """Whether the hypernetwork processors are installed now."""
        return self._attached

    def set_stack(self, stack: Iterable[Hypernetwork]) -> None:
        """Replace the networks applied (in order) without re-attaching."""
        self.stack[:] = list(stack)

    def detach(self) -> None:
        """Put back exactly the processor objects the UNet had before (idempotent)."""
        if self._attached:
            self._target.set_attn_processor(dict(self._originals))  # set_attn_processor pops from the dict
            for hook in self._hooks:
                hook.remove()
            self._hooks.clear()
            self.processor.end_forward()
            self._attached = False

    def reattach(self) -> None:
        """Install the hypernetwork processor on every attention layer again (idempotent)."""
        if not self._attached:
            self._originals = dict(self._target.attn_processors)
            self._target.set_attn_processor(self.processor)
            # Module hooks (not a replaced forward) bracket each UNet forward for the text-context reuse.
            self._hooks = [
                self._target.register_forward_pre_hook(self._begin),
                self._target.register_forward_hook(self._end, always_call=True),
            ]
            self._attached = True

    def _begin(self, module: nn.Module, args: Any) -> None:
        # Active dropout draws a fresh mask in every layer (as A1111 does), so the
        # layers' (k_in, v_in) differ and must not be shared.
        dropout_active = any(hn.training and hn.options.use_dropout for hn in self.processor.stack)
        reuse = not self._target.is_gradient_checkpointing and not dropout_active
        self.processor.begin_forward(reuse_text_context=reuse)

    def _end(self, module: nn.Module, args: Any, output: Any) -> None:
        self.processor.end_forward()

    def __enter__(self) -> Attachment:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.detach()


def attach(unet: UNet2DConditionModel, stack: Iterable[Hypernetwork]) -> Attachment:
    """Apply ``stack`` (in order, each at its own strength) to every attention layer of ``unet``."""
    return Attachment(unet, stack)
