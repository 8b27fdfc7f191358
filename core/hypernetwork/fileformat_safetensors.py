"""The hypernetwork as a ``.safetensors`` file: flat tensor names, A1111's metadata in the header.

Tensor names are ``hypernetwork.<width>.<k|v>.linear.<N>.<weight|bias>`` (N as in the .pt).
The header metadata holds the 13 A1111 keys with JSON-encoded values, plus ``format``,
``format_version`` and ``widths`` (the width order, which the tensor table does not keep).
Converting .pt -> .safetensors -> .pt gives back the same tensors and metadata.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from core.errors import FileFormatError
from core.hypernetwork.fileformat_dict import METADATA_KEYS, parse_a1111_dict, sort_state_keys, to_a1111_dict
from core.hypernetwork.fileformat_zip import atomic_write
from core.hypernetwork.module import Hypernetwork

FORMAT = "hyperforge.a1111-hypernetwork"
FORMAT_VERSION = "1"
_NAME_RE = re.compile(r"^hypernetwork\.(\d+)\.([kv])\.(linear\.\d+\.(?:weight|bias))$")


def save_safetensors(hn: Hypernetwork, path: str | os.PathLike[str], *, release: bool = False) -> str:
    """Write ``hn`` as .safetensors (training or release layout); return the sha256 written."""
    target = Path(path)
    raw = to_a1111_dict(hn, target.stem, release=release)
    widths = [key for key in raw if isinstance(key, int)]
    tensors: dict[str, Tensor] = {}
    for width in widths:
        for tag, state in zip("kv", raw[width], strict=True):
            for key, tensor in state.items():
                tensors[f"hypernetwork.{width}.{tag}.{key}"] = tensor
    metadata = {key: json.dumps(raw[key]) for key in METADATA_KEYS}
    metadata.update(format=FORMAT, format_version=FORMAT_VERSION, widths=json.dumps(widths))
    return atomic_write(target, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_safetensors_dict(path: str | os.PathLike[str]) -> dict[int | str, Any]:
    """Rebuild the A1111 dict from a .safetensors file written by ``save_safetensors``."""
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as exc:
        raise FileFormatError(f"{path}: cannot be read as safetensors: {exc}") from None
    if metadata.get("format") != FORMAT:
        raise FileFormatError(
            f"{path}: header metadata 'format' is {metadata.get('format')!r}, not {FORMAT!r}: "
            "not a hypernetwork written by hyperforge"
        )
    missing = [key for key in (*METADATA_KEYS, "widths") if key not in metadata]
    if missing:
        raise FileFormatError(f"{path}: header metadata lacks {missing}")
    try:
        values = {key: json.loads(metadata[key]) for key in (*METADATA_KEYS, "widths")}
    except json.JSONDecodeError as exc:
        raise FileFormatError(f"{path}: header metadata is not JSON: {exc}") from None
    widths = values.pop("widths")
    if not isinstance(widths, list) or not all(
        isinstance(w, int) and not isinstance(w, bool) for w in widths
    ):
        raise FileFormatError(
            f"{path}: header metadata 'widths' should be a list of ints, found {widths!r:.80}"
        )
    states: dict[tuple[int, str], dict[str, Tensor]] = {(w, tag): {} for w in widths for tag in "kv"}
    for name, tensor in tensors.items():
        match = _NAME_RE.match(name)
        if match is None:
            raise FileFormatError(
                f"{path}: tensor name {name!r} is not hypernetwork.<width>.<k|v>.linear.<N>.<param>"
            )
        width, tag, key = int(match.group(1)), match.group(2), match.group(3)
        if (width, tag) not in states:
            raise FileFormatError(f"{path}: tensor {name!r} has width {width}, not in 'widths' {widths}")
        states[(width, tag)][key] = tensor
    raw: dict[int | str, Any] = {}
    for width in widths:
        k, v = (
            {key: states[(width, tag)][key] for key in sort_state_keys(list(states[(width, tag)]))}
            for tag in "kv"
        )
        raw[width] = (k, v)
    raw.update(values)
    return raw


def load_safetensors(path: str | os.PathLike[str]) -> Hypernetwork:
    """Load a hypernetwork .safetensors; FileFormatError says what is wrong."""
    raw = read_safetensors_dict(path)
    try:
        return parse_a1111_dict(raw, default_name=Path(path).stem).hypernetwork
    except FileFormatError as exc:
        raise FileFormatError(f"{path}: {exc}") from None
