"""The hypernetwork as torch modules, laid out exactly as A1111 builds them, and their application.

A ``HypernetworkModule`` is one residual MLP (``k`` or ``v``) for one context width d:
``x + linear(x) * m`` with x of shape (..., d). A ``Hypernetwork`` holds a (k, v) pair per
enabled width; ``apply_hypernetworks`` replaces an attention layer's context by the k and v
inputs, stacking several networks in sequence (shared/spec/a1111-hypernetwork-format.md §1-2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from core.errors import InvalidOptionError
from core.hypernetwork.options import HypernetworkOptions, validate_name

# Activation classes by option name, as both A1111 and ComfyUI map them ("swish" is Hardswish).
ACTIVATION_CLASSES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leakyrelu": nn.LeakyReLU,
    "elu": nn.ELU,
    "swish": nn.Hardswish,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softsign": nn.Softsign,
    "mish": nn.Mish,
}

StateDict = Mapping[str, Tensor]


class HypernetworkModule(nn.Module):
    """One residual MLP of one width; ``linear`` is the Sequential whose keys A1111 loads strictly."""

    def __init__(
        self,
        width: int,
        options: HypernetworkOptions,
        *,
        state_dict: StateDict | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.width = width
        self.options = options
        # Build on the meta device: no memory is touched and no RNG is consumed by torch's default
        # init, which we would overwrite anyway (new modules) or replace with the file's tensors.
        layers: list[nn.Module] = []
        with torch.device("meta"):
            for spec in options.sequential_layout(width):
                if spec.kind == "linear":
                    layers.append(nn.Linear(spec.in_features, spec.out_features))
                elif spec.kind == "activation":
                    layers.append(ACTIVATION_CLASSES[spec.activation]())
                elif spec.kind == "layer_norm":
                    layers.append(nn.LayerNorm(spec.out_features))
                else:
                    layers.append(nn.Dropout(p=spec.p))
        self.linear = nn.Sequential(*layers)
        if state_dict is None:
            self.linear.to_empty(device="cpu")
            self._initialize(generator)
        else:
            # strict=True: the same key set A1111 requires; assign=True takes the tensors as they are.
            # copy=True: the module owns its parameters (no aliasing of the caller's tensors, nor of
            # one tensor stored twice in a file), like load_state_dict's copy into fresh parameters.
            tensors = {
                key.removeprefix("linear."): value.detach().to(torch.float32, copy=True).contiguous()
                for key, value in state_dict.items()
            }
            self.linear.load_state_dict(tensors, strict=True, assign=True)

    def _initialize(self, generator: torch.Generator | None) -> None:
        """Initialise new weights as A1111 does (spec §2); every LayerNorm gets N(0, 0.01), bias 0."""
        init = self.options.weight_initialization
        # A1111 passes only `nonlinearity` to kaiming (a=0), so leaky_relu's gain equals relu's.
        nonlinearity: Literal["leaky_relu", "relu"] = (
            "leaky_relu" if self.options.activation_func == "leakyrelu" else "relu"
        )
        with torch.no_grad():
            for layer in self.linear:
                if not isinstance(layer, nn.Linear | nn.LayerNorm):
                    continue
                weight, bias = layer.weight, layer.bias
                if init == "Normal" or isinstance(layer, nn.LayerNorm):
                    nn.init.normal_(weight, mean=0.0, std=0.01, generator=generator)
                elif init == "XavierUniform":
                    nn.init.xavier_uniform_(weight, generator=generator)
                elif init == "XavierNormal":
                    nn.init.xavier_normal_(weight, generator=generator)
                elif init == "KaimingUniform":
                    nn.init.kaiming_uniform_(weight, nonlinearity=nonlinearity, generator=generator)
                else:
                    nn.init.kaiming_normal_(weight, nonlinearity=nonlinearity, generator=generator)
                nn.init.zeros_(bias)

    def forward(self, x: Tensor, multiplier: float = 1.0) -> Tensor:
        """Return ``x + linear(x) * multiplier``; x is (..., width); the multiplier is 1 while training."""
        m = 1.0 if self.training else multiplier
        return x + self.linear(x) * m


class Hypernetwork(nn.Module):
    """A named hypernetwork: a (k, v) module pair per enabled width, plus the file's metadata."""

    def __init__(
        self,
        name: str,
        options: HypernetworkOptions,
        *,
        state_dicts: Mapping[int, tuple[StateDict, StateDict]] | None = None,
        generator: torch.Generator | None = None,
        step: int = 0,
        sd_checkpoint: str | None = None,
        sd_checkpoint_name: str | None = None,
        optional_info: str | None = None,
        strength: float = 1.0,
    ) -> None:
        super().__init__()
        self.name = name
        self.options = options
        self.step = step
        self.sd_checkpoint = sd_checkpoint
        self.sd_checkpoint_name = sd_checkpoint_name
        self.optional_info = optional_info
        self.strength = float(strength)
        if state_dicts is not None and list(state_dicts) != list(options.enable_sizes):
            raise InvalidOptionError(
                f"state dicts for widths {list(state_dicts)}, enable_sizes {list(options.enable_sizes)}",
                option="enable_sizes",
            )
        # nn.ModuleDict needs str keys; widths() and modules_for() expose ints. Insertion order is
        # the options' width order, which is the file's dict order and the optimizer's order.
        self.layers = nn.ModuleDict()
        for width in options.enable_sizes:
            pair = state_dicts[width] if state_dicts is not None else (None, None)
            self.layers[str(width)] = nn.ModuleList(
                [
                    HypernetworkModule(width, options, state_dict=pair[0], generator=generator),
                    HypernetworkModule(width, options, state_dict=pair[1], generator=generator),
                ]
            )
        # Ready for inference (strength applies, no dropout); the trainer calls .train() itself.
        self.eval()

    @classmethod
    def new(cls, name: str, options: HypernetworkOptions, seed: int | None = None) -> Hypernetwork:
        """A freshly initialised hypernetwork; the same seed gives the same weights."""
        generator = None
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
        return cls(validate_name(name), options, generator=generator)

    def widths(self) -> tuple[int, ...]:
        """The enabled widths, in file order."""
        return tuple(int(key) for key in self.layers)

    def modules_for(self, width: int) -> tuple[HypernetworkModule, HypernetworkModule] | None:
        """The (k, v) modules of a context width, or None when this width passes through."""
        key = str(width)
        if key not in self.layers:
            return None
        k, v = self.layers[key].children()
        assert isinstance(k, HypernetworkModule) and isinstance(v, HypernetworkModule)
        return k, v

    def parameters_in_a1111_order(self) -> list[nn.Parameter]:
        """Parameters as A1111 gives them to its optimizer: widths in order, all k then all v."""
        params: list[nn.Parameter] = []
        for width in self.widths():
            pair = self.modules_for(width)
            assert pair is not None
            for module in pair:
                params.extend(module.linear.parameters())
        return params


def apply_hypernetworks(context: Tensor, stack: Sequence[Hypernetwork]) -> tuple[Tensor, Tensor]:
    """Turn a context (..., d) into the (k_in, v_in) pair, applying each network in turn (A1111 order)."""
    k, v = context, context
    for network in stack:
        pair = network.modules_for(context.shape[-1])
        if pair is None:
            continue
        kmod, vmod = pair
        # The modules may be fp32 while the UNet runs in fp16/bf16: compute in the module's dtype.
        dtype = next(kmod.parameters()).dtype
        k = kmod(k.to(dtype), network.strength).to(context.dtype)
        v = vmod(v.to(dtype), network.strength).to(context.dtype)
    return k, v
