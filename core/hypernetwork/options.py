"""Validated hypernetwork options and the arithmetic that follows from them (torch-free).

The API imports this module to validate a job's options and to predict parameter
counts and file sizes, so it must never import torch. The layout rules are those
of the A1111 hypernetwork format (shared/spec/a1111-hypernetwork-format.md, §2):
for each pair of adjacent multipliers one ``Linear``, then the activation (never
after the last Linear unless ``activate_output``), then ``LayerNorm`` if enabled,
then ``Dropout`` if the dropout entry of the Linear's output is non-zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from core.errors import InvalidOptionError

# The activations both A1111 and ComfyUI build (ComfyUI's list is the narrower one).
# "swish" is torch's Hardswish in both programs, not SiLU.
ALLOWED_ACTIVATIONS: frozenset[str] = frozenset(
    {"linear", "relu", "leakyrelu", "elu", "swish", "tanh", "sigmoid", "softsign", "mish"}
)
ALLOWED_INITIALIZATIONS: frozenset[str] = frozenset(
    {"Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal"}
)
# SD1's text width first, then the UNet's self-attention widths: A1111's UI default, in its order.
DEFAULT_ENABLE_SIZES: tuple[int, ...] = (768, 320, 640, 1280)
# Widths of attention contexts in SD1 (768), SD2 (1024), SDXL (2048) and their UNets.
KNOWN_WIDTHS: frozenset[int] = frozenset({320, 640, 768, 1024, 1280, 2048})
# The dropout rate A1111 (and ComfyUI) use when only use_dropout/last_layer_dropout are given.
DEFAULT_DROPOUT = 0.3

LayerKind = Literal["linear", "activation", "layer_norm", "dropout"]


@dataclass(frozen=True)
class SequentialLayer:
    """One entry of a module's ``linear`` Sequential: its kind and feature sizes."""

    kind: LayerKind
    in_features: int
    out_features: int
    # The activation's name for "activation", the rate for "dropout"; unused otherwise.
    activation: str = ""
    p: float = 0.0

    @property
    def has_parameters(self) -> bool:
        """Whether this layer contributes ``weight``/``bias`` keys to the state dict."""
        return self.kind in ("linear", "layer_norm")

    def parameter_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The (weight, bias) shapes of a Linear or LayerNorm."""
        if self.kind == "linear":
            return (self.out_features, self.in_features), (self.out_features,)
        if self.kind == "layer_norm":
            return (self.out_features,), (self.out_features,)
        raise InvalidOptionError(f"a {self.kind} layer has no parameters", option="layer")


def _fail(option: str, message: str) -> InvalidOptionError:
    return InvalidOptionError(f"{option}: {message}", option=option)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_float_tuple(value: object) -> bool:
    return isinstance(value, tuple) and all(type(x) is float for x in value)


def validate_name(name: object) -> str:
    """Check a hypernetwork name is usable as a file's base name and return it."""
    if not isinstance(name, str) or not name.strip():
        raise _fail("name", "must be a non-empty string")
    if name in (".", "..") or any(c in name for c in "/\\") or any(ord(c) < 32 for c in name):
        raise _fail("name", f"{name!r} must be usable as a file name (no '/', '\\' or control characters)")
    if len(name.encode("utf-8")) > 200:
        raise _fail("name", "must be at most 200 bytes long")
    return name


def dropout_structure_for(
    layer_structure: Sequence[float], use_dropout: bool, last_layer_dropout: bool
) -> tuple[float, ...]:
    """A1111's derivation of the dropout structure from the two flags (spec §2)."""
    n = len(layer_structure)
    if not use_dropout or n < 3:
        # Without a hidden layer there is nowhere to put dropout: the last entry is always 0.
        return (0.0,) * n
    last = DEFAULT_DROPOUT if last_layer_dropout else 0.0
    return (0.0, *([DEFAULT_DROPOUT] * (n - 3)), last, 0.0)


def _check_layer_structure(value: object) -> tuple[float, ...]:
    allowed = "a list of positive multipliers starting and ending with 1, e.g. 1,2,1"
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise _fail("layer_structure", f"must be {allowed}")
    items = list(value)
    if len(items) < 2 or not all(_is_number(x) for x in items):
        raise _fail("layer_structure", f"{items!r} is not {allowed}")
    floats = tuple(float(x) for x in items)
    if not all(math.isfinite(x) and x > 0 for x in floats):
        raise _fail("layer_structure", f"{items!r}: every multiplier must be > 0 ({allowed})")
    if floats[0] != 1.0 or floats[-1] != 1.0:
        raise _fail("layer_structure", f"{items!r}: the first and last multipliers must be 1 ({allowed})")
    return floats


def _check_activation(value: object) -> str:
    allowed = ", ".join(sorted(ALLOWED_ACTIVATIONS))
    if value is None:
        return "linear"
    if not isinstance(value, str):
        raise _fail("activation_func", f"{value!r} is not one of: {allowed}")
    name = value.strip().lower()
    if name == "none":
        return "linear"
    if name not in ALLOWED_ACTIVATIONS:
        raise _fail(
            "activation_func",
            f"{value!r} is not one of: {allowed} (the activations both A1111 and ComfyUI build)",
        )
    return name


def _check_initialization(value: object) -> str:
    allowed = ", ".join(sorted(ALLOWED_INITIALIZATIONS))
    by_lower = {v.lower(): v for v in ALLOWED_INITIALIZATIONS}
    if not isinstance(value, str) or value.strip().lower() not in by_lower:
        raise _fail("weight_initialization", f"{value!r} is not one of: {allowed}")
    return by_lower[value.strip().lower()]


def _check_enable_sizes(value: object) -> tuple[int, ...]:
    allowed = "a non-empty list of distinct positive integer widths, e.g. 768,320,640,1280"
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise _fail("enable_sizes", f"must be {allowed}")
    items = list(value)
    if not items or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in items):
        raise _fail("enable_sizes", f"{items!r} is not {allowed}")
    if len(set(items)) != len(items):
        raise _fail("enable_sizes", f"{items!r} repeats a width; must be {allowed}")
    return tuple(items)


def _check_dropout_structure(value: object, n: int) -> tuple[float, ...]:
    allowed = (
        f"{n} rates in [0, 1), the first and the last 0, e.g. {','.join(['0'] + ['0.3'] * (n - 2) + ['0'])}"
    )
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise _fail("dropout_structure", f"must be {allowed}")
    items = list(value)
    if len(items) != n or not all(_is_number(x) for x in items):
        raise _fail("dropout_structure", f"{items!r} is not {allowed} (one per layer_structure entry)")
    floats = tuple(float(x) for x in items)
    if not all(math.isfinite(x) and 0.0 <= x < 1.0 for x in floats):
        raise _fail("dropout_structure", f"{items!r}: every rate must be in [0, 1); must be {allowed}")
    # Entry 0 would be the input's dropout, which A1111 never builds; the last would drop the output.
    if floats[0] != 0.0 or floats[-1] != 0.0:
        raise _fail(
            "dropout_structure", f"{items!r}: the first and last entries must be 0; must be {allowed}"
        )
    return floats


def _check_bool(option: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _fail(option, f"{value!r} must be true or false")
    return value


@dataclass(frozen=True)
class HypernetworkOptions:
    """The options that fix a hypernetwork's architecture, in canonical (validated) form."""

    layer_structure: tuple[float, ...]
    activation_func: str
    weight_initialization: str
    is_layer_norm: bool
    dropout_structure: tuple[float, ...]
    activate_output: bool
    enable_sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        # Validate even direct construction (and dataclasses.replace), so an instance is always sound;
        # create() is the way to get the canonical form (tuples of floats, lower-case activation).
        hint = "is not in canonical form (build options with HypernetworkOptions.create)"
        _check_layer_structure(self.layer_structure)
        if not _is_float_tuple(self.layer_structure):
            raise _fail("layer_structure", hint)
        if _check_activation(self.activation_func) != self.activation_func:
            raise _fail("activation_func", hint)
        if _check_initialization(self.weight_initialization) != self.weight_initialization:
            raise _fail("weight_initialization", hint)
        _check_bool("is_layer_norm", self.is_layer_norm)
        _check_bool("activate_output", self.activate_output)
        _check_dropout_structure(self.dropout_structure, len(self.layer_structure))
        if not _is_float_tuple(self.dropout_structure):
            raise _fail("dropout_structure", hint)
        _check_enable_sizes(self.enable_sizes)
        if not isinstance(self.enable_sizes, tuple):
            raise _fail("enable_sizes", hint)
        for width in self.enable_sizes:
            for mult, features in zip(self.layer_structure, self.layer_dims(width), strict=True):
                if features < 1:
                    raise _fail(
                        "layer_structure",
                        f"multiplier {mult:g} x width {width} truncates to {features} features; "
                        "use larger multipliers or widths",
                    )

    @classmethod
    def create(
        cls,
        layer_structure: Sequence[float] = (1, 2, 1),
        activation_func: str | None = "linear",
        weight_initialization: str = "Normal",
        is_layer_norm: bool = False,
        use_dropout: bool = False,
        dropout_structure: Sequence[float] | None = None,
        last_layer_dropout: bool = False,
        activate_output: bool = False,
        enable_sizes: Sequence[int] = DEFAULT_ENABLE_SIZES,
    ) -> HypernetworkOptions:
        """Validate and normalise user-facing options; raise InvalidOptionError naming the bad option."""
        structure = _check_layer_structure(layer_structure)
        use_dropout = _check_bool("use_dropout", use_dropout)
        last_layer_dropout = _check_bool("last_layer_dropout", last_layer_dropout)
        if dropout_structure is None:
            dropout = dropout_structure_for(structure, use_dropout, last_layer_dropout)
        else:
            dropout = _check_dropout_structure(dropout_structure, len(structure))
            # An explicit structure decides both flags (A1111: use_dropout = any(structure)); a flag
            # asking for dropout the structure does not have is a contradiction, not a default.
            if use_dropout and not any(dropout):
                raise _fail("use_dropout", f"is true but dropout_structure {list(dropout)!r} is all zeros")
            if last_layer_dropout and (len(dropout) < 3 or dropout[-2] == 0):
                raise _fail(
                    "last_layer_dropout",
                    f"is true but dropout_structure {list(dropout)!r} has 0 before the last entry",
                )
        return cls(
            layer_structure=structure,
            activation_func=_check_activation(activation_func),
            weight_initialization=_check_initialization(weight_initialization),
            is_layer_norm=_check_bool("is_layer_norm", is_layer_norm),
            dropout_structure=dropout,
            activate_output=_check_bool("activate_output", activate_output),
            enable_sizes=_check_enable_sizes(enable_sizes),
        )

    @property
    def use_dropout(self) -> bool:
        """True iff some Dropout layer is built (a non-zero dropout entry)."""
        return any(p != 0 for p in self.dropout_structure)

    @property
    def last_layer_dropout(self) -> bool:
        """True iff the output of the second-to-last Linear is dropped out."""
        return self.dropout_structure[-2] != 0

    def release(self) -> HypernetworkOptions:
        """The same options without dropout: the layout of files meant for use (ComfyUI never evals)."""
        return replace(self, dropout_structure=(0.0,) * len(self.layer_structure))

    def layer_dims(self, width: int) -> tuple[int, ...]:
        """Feature sizes after each layer_structure entry: int() truncates (1.33 x 320 -> 425)."""
        return tuple(int(width * mult) for mult in self.layer_structure)

    def sequential_layout(self, width: int) -> tuple[SequentialLayer, ...]:
        """The layers of one module's ``linear`` Sequential, in order, exactly as A1111 builds them."""
        dims = self.layer_dims(width)
        layers: list[SequentialLayer] = []
        last = len(dims) - 2
        for i in range(len(dims) - 1):
            d_in, d_out = dims[i], dims[i + 1]
            layers.append(SequentialLayer("linear", d_in, d_out))
            if self.activation_func != "linear" and (i < last or self.activate_output):
                layers.append(SequentialLayer("activation", d_out, d_out, activation=self.activation_func))
            if self.is_layer_norm:
                layers.append(SequentialLayer("layer_norm", d_out, d_out))
            if self.dropout_structure[i + 1] > 0:
                layers.append(SequentialLayer("dropout", d_out, d_out, p=self.dropout_structure[i + 1]))
        return tuple(layers)

    def state_dict_shapes(self, width: int) -> dict[str, tuple[int, ...]]:
        """Expected state-dict keys of one module (ascending index, weight before bias) and shapes."""
        shapes: dict[str, tuple[int, ...]] = {}
        for index, layer in enumerate(self.sequential_layout(width)):
            if layer.has_parameters:
                weight, bias = layer.parameter_shapes()
                shapes[f"linear.{index}.weight"] = weight
                shapes[f"linear.{index}.bias"] = bias
        return shapes

    def module_parameter_count(self, width: int) -> int:
        """Parameters of one module (k or v) of this width."""
        return sum(math.prod(shape) for shape in self.state_dict_shapes(width).values())

    def parameter_count(self) -> int:
        """Total parameters over all widths, k and v ([1,2,1]: 8d^2+6d per width)."""
        return sum(2 * self.module_parameter_count(width) for width in self.enable_sizes)

    def estimated_file_bytes(self, release: bool = False, *, name: str = "hypernetwork") -> int:
        """Predict the .pt size save_pt writes: exact for step < 256 and no checkpoint/info strings."""
        from core.hypernetwork.filesize import estimate_pt_bytes  # torch-free, kept apart for size

        return estimate_pt_bytes(self.release() if release else self, name)

    def warnings(self) -> list[str]:
        """Combinations that load, but behave differently from what users may expect."""
        out: list[str] = []
        if self.is_layer_norm and self.activation_func != "linear" and not self.activate_output:
            out.append(
                "layer norm with a non-linear activation and activate_output false: ComfyUI counts the "
                "LayerNorm weights as layers and applies the activation after the last Linear too, so "
                "it computes a different function than A1111 (set activate_output or drop layer norm)"
            )
        unknown = [w for w in self.enable_sizes if w not in KNOWN_WIDTHS]
        if unknown:
            out.append(
                f"enable_sizes {unknown} match no attention context of SD1/SD2/SDXL "
                f"({sorted(KNOWN_WIDTHS)}): those modules are never used"
            )
        return out

    def as_metadata(self) -> dict[str, Any]:
        """The option keys of the A1111 file (plain JSON-able values, lists as A1111 writes them)."""
        return {
            "layer_structure": list(self.layer_structure),
            "activation_func": self.activation_func,
            "is_layer_norm": self.is_layer_norm,
            "weight_initialization": self.weight_initialization,
            "activate_output": self.activate_output,
            "use_dropout": self.use_dropout,
            "dropout_structure": list(self.dropout_structure),
            "last_layer_dropout": self.last_layer_dropout,
            "enable_sizes": list(self.enable_sizes),
        }
