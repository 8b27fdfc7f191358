"""The A1111 hypernetwork dict (spec §3) to and from a ``Hypernetwork``, with strict checking.

The dict maps each int width to ``(k_state_dict, v_state_dict)`` and holds 13 metadata keys.
Both the ``.pt`` and the ``.safetensors`` readers turn their file into this dict and hand it
to ``parse_a1111_dict``, so every format is checked by the same rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from core.errors import FileFormatError, InvalidOptionError
from core.hypernetwork.module import Hypernetwork
from core.hypernetwork.options import HypernetworkOptions

# The metadata keys, in the order the spec lists them (and A1111 writes them).
METADATA_KEYS: tuple[str, ...] = (
    "step",
    "name",
    "layer_structure",
    "activation_func",
    "is_layer_norm",
    "weight_initialization",
    "sd_checkpoint",
    "sd_checkpoint_name",
    "activate_output",
    "use_dropout",
    "dropout_structure",
    "last_layer_dropout",
    "optional_info",
)
# The first format: linear1 (d -> 2d), linear2 (2d -> d), read as linear.0 / linear.1.
LEGACY_KEYS: dict[str, str] = {
    "linear1.weight": "linear.0.weight",
    "linear1.bias": "linear.0.bias",
    "linear2.weight": "linear.1.weight",
    "linear2.bias": "linear.1.bias",
}
_KEY_RE = re.compile(r"^linear\.(\d+)\.(weight|bias)$")

Layout = Literal["training", "release", "legacy"]


@dataclass
class ParsedFile:
    """A loaded hypernetwork plus what the reader noticed about the file."""

    hypernetwork: Hypernetwork
    layout: Layout
    # Metadata keys absent from the file, filled with A1111's defaults.
    defaulted: list[str] = field(default_factory=list)
    # String keys neither A1111 nor we use (ignored).
    unknown_keys: list[str] = field(default_factory=list)
    # False when some state dict is not in ascending layer order, weight before bias (ComfyUI cares).
    keys_ordered: bool = True
    dtypes: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    # The metadata keys present in the file, as stored: ComfyUI reads these with its own defaults
    # (activate_output False) and builds Dropout from the two flags, not from dropout_structure.
    stored: dict[str, Any] = field(default_factory=dict)


def sort_state_keys(keys: list[str]) -> list[str]:
    """Keys in ascending layer index, weight before bias; unknown forms last in their order."""

    def rank(key: str) -> tuple[int, int]:
        match = _KEY_RE.match(key)
        if match is None:
            return (1 << 30, 0)
        return (int(match.group(1)), 0 if match.group(2) == "weight" else 1)

    return sorted(keys, key=rank)


def to_a1111_dict(hn: Hypernetwork, name: str, *, release: bool = False) -> dict[int | str, Any]:
    """The dict A1111 saves: int width -> (k, v) state dicts, then the 13 metadata keys."""
    source = hn.options
    target = source.release() if release else source
    _check_runtime_metadata(hn)
    out: dict[int | str, Any] = {}
    for width in hn.widths():
        pair = hn.modules_for(width)
        assert pair is not None
        # Parameterised layers keep their order without Dropout; only their indices change.
        src_keys = list(source.state_dict_shapes(width))
        dst_keys = list(target.state_dict_shapes(width))
        state_dicts = []
        for module in pair:
            current = module.state_dict()
            # clone(): each tensor owns exactly its storage, so torch.save writes no extra bytes.
            state_dicts.append(
                {
                    dst: current[src].detach().to(device="cpu", dtype=torch.float32).contiguous().clone()
                    for src, dst in zip(src_keys, dst_keys, strict=True)
                }
            )
        out[int(width)] = (state_dicts[0], state_dicts[1])
    meta = target.as_metadata()
    values: dict[str, Any] = {
        "step": int(hn.step),
        "name": name,
        "sd_checkpoint": hn.sd_checkpoint,
        "sd_checkpoint_name": hn.sd_checkpoint_name,
        # A1111 writes None for empty optional_info.
        "optional_info": hn.optional_info or None,
        **{key: meta[key] for key in METADATA_KEYS if key in meta},
    }
    for key in METADATA_KEYS:
        out[key] = values[key]
    return out


def _check_runtime_metadata(hn: Hypernetwork) -> None:
    """Refuse values that would not be plain Python in the file (A1111's loader rejects classes)."""
    if not isinstance(hn.step, int) or isinstance(hn.step, bool) or hn.step < 0:
        raise InvalidOptionError(f"step must be a non-negative int, not {hn.step!r}", option="step")
    for key in ("sd_checkpoint", "sd_checkpoint_name", "optional_info"):
        value = getattr(hn, key)
        if value is not None and not isinstance(value, str):
            raise InvalidOptionError(
                f"{key} must be a string or None, not {type(value).__name__}", option=key
            )


def _meta(raw: dict[Any, Any], key: str, kinds: tuple[type, ...], default: Any, defaulted: list[str]) -> Any:
    """Fetch one metadata value, checking its type; missing keys take A1111's default."""
    if key not in raw:
        defaulted.append(key)
        return default
    value = raw[key]
    # bool is an int subclass: a bool where an int is expected (or the reverse) is a wrong type.
    ok = isinstance(value, kinds) and (isinstance(value, bool) == (bool in kinds) or value is None)
    if not ok:
        expected = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
        raise FileFormatError(
            f"metadata {key!r} should be {expected}, found {type(value).__name__} {value!r:.80}"
        )
    return value


def _number_list(key: str, value: Any) -> list[float] | None:
    if value is None:
        return None
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value):
        raise FileFormatError(f"metadata {key!r} should be a list of numbers, found {value!r:.80}")
    return [float(x) for x in value]


def _split_keys(raw: dict[Any, Any]) -> tuple[list[int], list[str]]:
    """Separate width keys from metadata keys; string widths and other key types are errors."""
    widths: list[int] = []
    unknown: list[str] = []
    for key in raw:
        if isinstance(key, int) and not isinstance(key, bool):
            if key <= 0:
                raise FileFormatError(f"width key {key} is not a positive width")
            widths.append(key)
        elif isinstance(key, str):
            if key.strip().isdigit():
                raise FileFormatError(
                    f"width key {key!r} is a string: A1111 only loads int width keys and would skip it"
                )
            if key not in METADATA_KEYS:
                unknown.append(key)
        else:
            raise FileFormatError(f"key {key!r} ({type(key).__name__}) is neither an int width nor a string")
    if not widths:
        raise FileFormatError("the file holds no width keys (int -> (k, v) state dicts)")
    return widths, unknown


def _pair(width: int, value: Any) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Check one width's value is a (k, v) pair of str -> tensor dicts."""
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise FileFormatError(
            f"width {width}: expected a (k, v) pair of state dicts, found {type(value).__name__}"
        )
    out = []
    for tag, sd in zip("kv", value, strict=True):
        if not isinstance(sd, dict):
            raise FileFormatError(f"width {width} {tag}: expected a state dict, found {type(sd).__name__}")
        for key, tensor in sd.items():
            if not isinstance(key, str) or not isinstance(tensor, Tensor):
                raise FileFormatError(f"width {width} {tag}: entry {key!r} is not a str -> tensor item")
            if not tensor.is_floating_point():
                raise FileFormatError(f"width {width} {tag}: {key} has non-float dtype {tensor.dtype}")
        out.append(sd)
    return out[0], out[1]


def _check_keys(width: int, tag: str, sd: dict[str, Tensor], options: HypernetworkOptions) -> None:
    """Keys and shapes must be exactly the Sequential's, as A1111 loads strictly."""
    expected = options.state_dict_shapes(width)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        hint = ""
        if options.use_dropout and set(sd) == set(options.release().state_dict_shapes(width)):
            hint = " (the keys are numbered without Dropout layers, but dropout_structure has dropout)"
        raise FileFormatError(
            f"width {width} {tag}: keys do not match layer_structure {list(options.layer_structure)} "
            f"with these options: missing {missing}, unexpected {unexpected}{hint}"
        )
    for key, shape in expected.items():
        if tuple(sd[key].shape) != shape:
            raise FileFormatError(
                f"width {width} {tag}: {key} has shape {tuple(sd[key].shape)}, expected {shape} "
                f"from layer_structure {list(options.layer_structure)}"
            )


def parse_a1111_dict(raw: object, *, default_name: str) -> ParsedFile:
    """Check an A1111 hypernetwork dict and build the Hypernetwork; FileFormatError says what is wrong."""
    if not isinstance(raw, dict):
        raise FileFormatError(f"the file holds a {type(raw).__name__}, not an A1111 hypernetwork dict")
    widths, unknown = _split_keys(raw)
    pairs = {width: _pair(width, raw[width]) for width in widths}
    legacy = any(key in LEGACY_KEYS for k, v in pairs.values() for key in (*k, *v))
    if legacy:
        pairs = {width: (_unlegacy(width, k), _unlegacy(width, v)) for width, (k, v) in pairs.items()}
    defaulted: list[str] = []
    step = _meta(raw, "step", (int,), 0, defaulted)
    if step < 0:
        raise FileFormatError(f"metadata 'step' is negative: {step}")
    name = _meta(raw, "name", (str,), default_name, defaulted)
    structure = _number_list(
        "layer_structure", _meta(raw, "layer_structure", (list, tuple), [1, 2, 1], defaulted)
    )
    activation = _meta(raw, "activation_func", (str, type(None)), None, defaulted)
    layer_norm = _meta(raw, "is_layer_norm", (bool,), False, defaulted)
    init = _meta(raw, "weight_initialization", (str,), "Normal", defaulted)
    checkpoint = _meta(raw, "sd_checkpoint", (str, type(None)), None, defaulted)
    checkpoint_name = _meta(raw, "sd_checkpoint_name", (str, type(None)), None, defaulted)
    # A1111 defaults a missing activate_output to True (ComfyUI to False): follow A1111.
    activate_output = _meta(raw, "activate_output", (bool,), True, defaulted)
    use_dropout = _meta(raw, "use_dropout", (bool,), False, defaulted)
    dropout = _number_list(
        "dropout_structure", _meta(raw, "dropout_structure", (list, tuple, type(None)), None, defaulted)
    )
    last_dropout = _meta(raw, "last_layer_dropout", (bool,), False, defaulted)
    info = _meta(raw, "optional_info", (str, type(None)), None, defaulted)
    notes: list[str] = []
    common: dict[str, Any] = {
        "layer_structure": structure or (),
        "activation_func": activation,
        "weight_initialization": init,
        "is_layer_norm": layer_norm,
        "activate_output": activate_output,
        "enable_sizes": widths,
    }
    try:
        if dropout is None:
            options = HypernetworkOptions.create(
                **common, use_dropout=use_dropout, last_layer_dropout=last_dropout
            )
        else:
            # The structure decides (A1111 builds from it); the flags are derived and only noted.
            options = HypernetworkOptions.create(**common, dropout_structure=dropout)
            if use_dropout != options.use_dropout or last_dropout != options.last_layer_dropout:
                notes.append(
                    f"use_dropout/last_layer_dropout ({use_dropout}/{last_dropout}) disagree with "
                    f"dropout_structure {dropout}; the structure decides the layers"
                )
    except InvalidOptionError as exc:
        raise FileFormatError(f"metadata {exc}") from None
    keys_ordered = True
    dtypes: set[str] = set()
    for width, (k, v) in pairs.items():
        for tag, sd in (("k", k), ("v", v)):
            _check_keys(width, tag, sd, options)
            keys_ordered = keys_ordered and list(sd) == list(options.state_dict_shapes(width))
            dtypes.update(str(t.dtype).removeprefix("torch.") for t in sd.values())
    hn = Hypernetwork(
        name,
        options,
        state_dicts=pairs,
        step=step,
        sd_checkpoint=checkpoint,
        sd_checkpoint_name=checkpoint_name,
        optional_info=info,
    )
    layout: Layout = "legacy" if legacy else ("training" if options.use_dropout else "release")
    stored = {key: raw[key] for key in METADATA_KEYS if key in raw}
    return ParsedFile(hn, layout, defaulted, unknown, keys_ordered, dtypes, notes, stored)


def _unlegacy(width: int, sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename linear1/linear2 to linear.0/linear.1, as A1111's fix_old_state_dict does."""
    if set(sd) != set(LEGACY_KEYS):
        raise FileFormatError(
            f"width {width}: legacy keys must be exactly {sorted(LEGACY_KEYS)}, found {sorted(sd)}"
        )
    return {LEGACY_KEYS[key]: sd[key] for key in LEGACY_KEYS}
