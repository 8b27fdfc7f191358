"""Hypernetwork files: A1111 ``.pt`` (training and release layouts, legacy), ``.pt.optim``, ``.safetensors``.

Every ``.pt`` we write loads unchanged in A1111 and ComfyUI (spec §3): a plain dict, CPU fp32
contiguous tensors, only the zip entries A1111's safe loader allows, written atomically. Every
file we read goes through ``torch.load(weights_only=True)`` and strict checks, so a bad file
gives a ``FileFormatError`` that says what is wrong instead of a half-loaded network.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from core.errors import FileFormatError, InvalidOptionError
from core.hypernetwork.fileformat_dict import ParsedFile, parse_a1111_dict, to_a1111_dict
from core.hypernetwork.fileformat_safetensors import load_safetensors, read_safetensors_dict, save_safetensors
from core.hypernetwork.fileformat_zip import ALLOWED_ENTRY, save_torch_file, sha256_file
from core.hypernetwork.module import Hypernetwork
from core.hypernetwork.options import ALLOWED_ACTIVATIONS

__all__ = [
    "load_any",
    "load_optimizer_state",
    "load_pt",
    "load_safetensors",
    "read_any",
    "save_optimizer",
    "save_pt",
    "save_safetensors",
]

log = logging.getLogger(__name__)

OPTIM_SUFFIX = ".optim"
_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")


def save_pt(hn: Hypernetwork, path: str | os.PathLike[str], *, release: bool = False) -> str:
    """Write ``hn`` as an A1111 .pt (release: without Dropout); return the sha256 of the file written."""
    # The stored name is the file's base name, as A1111 does for its own checkpoints (spec §3).
    return save_torch_file(to_a1111_dict(hn, Path(path).stem, release=release), path)


def torch_load_checked(path: str | os.PathLike[str]) -> Any:
    """torch.load(weights_only=True) a zip-format torch file, turning every failure into FileFormatError."""
    if not os.path.isfile(path):
        raise FileFormatError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise FileFormatError(f"{path}: not a zip-format torch file (truncated, or not a .pt file at all)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise FileFormatError(
            f"{path}: refused by the weights-only loader: the pickle holds code or objects other than "
            f"tensors and plain values, so loading it could run code ({first})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise FileFormatError(f"{path}: cannot be read as a torch file: {exc}") from None


def _parse(raw: object, path: str | os.PathLike[str]) -> ParsedFile:
    """parse_a1111_dict with the file's path in front of any error."""
    try:
        return parse_a1111_dict(raw, default_name=Path(path).stem)
    except FileFormatError as exc:
        raise FileFormatError(f"{path}: {exc}") from None


def read_pt(path: str | os.PathLike[str]) -> ParsedFile:
    """Load and check a .pt, keeping what the reader noticed (layout, defaults, key order)."""
    return _parse(torch_load_checked(path), path)


def load_pt(path: str | os.PathLike[str]) -> Hypernetwork:
    """Load an A1111 .pt (training, release or legacy layout) safely."""
    return read_pt(path).hypernetwork


def read_any(path: str | os.PathLike[str]) -> tuple[str, ParsedFile]:
    """Load a .pt or .safetensors hypernetwork, chosen by the file's content; return (format, parsed)."""
    if not os.path.isfile(path):
        raise FileFormatError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(b"PK"):
        return "pt", read_pt(path)
    # safetensors starts with a little-endian u64 header length, then the JSON header's "{".
    if len(head) == 9 and head[8:9] == b"{":
        parsed = _parse(read_safetensors_dict(path), path)
        return "safetensors", parsed
    raise FileFormatError(f"{path}: neither a torch .pt (zip) nor a .safetensors file")


def load_any(path: str | os.PathLike[str]) -> Hypernetwork:
    """Load a .pt or .safetensors hypernetwork, dispatching on the file's content, not its name."""
    return read_any(path)[1].hypernetwork


def _optim_path(pt_path: str | os.PathLike[str]) -> str:
    return os.fspath(pt_path) + OPTIM_SUFFIX


def _to_cpu(value: Any) -> Any:
    """Deep copy of an optimizer state with every tensor on the CPU (the sidecar loads anywhere)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu").contiguous().clone()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(item) for item in value)
    return value


def save_optimizer(pt_path: str | os.PathLike[str], optimizer: torch.optim.Optimizer, pt_sha256: str) -> str:
    """Write ``<pt>.optim`` for the .pt whose sha256 is given; return the sidecar's sha256."""
    if not isinstance(pt_sha256, str) or _SHA256_RE.match(pt_sha256) is None:
        raise InvalidOptionError(
            f"pt_sha256 must be 64 hex digits, not {pt_sha256!r:.80}", option="pt_sha256"
        )
    sidecar = {
        "optimizer_name": type(optimizer).__name__,
        # A1111 compares this to the first 10 hex digits of the .pt's sha256 and drops the state
        # on a mismatch: it must be the hash of the file actually written (save_pt's return value).
        "hash": pt_sha256.lower()[:10],
        "optimizer_state_dict": _to_cpu(optimizer.state_dict()),
    }
    return save_torch_file(sidecar, _optim_path(pt_path))


def load_optimizer_state(
    pt_path: str | os.PathLike[str], optimizer_name: str | None = None
) -> dict[str, Any] | None:
    """The ``optimizer_state_dict`` of ``<pt>.optim``, or None if absent, stale or for another optimizer."""
    optim_path = _optim_path(pt_path)
    if not os.path.isfile(optim_path):
        return None
    sidecar = torch_load_checked(optim_path)
    if not isinstance(sidecar, dict) or not isinstance(sidecar.get("optimizer_state_dict"), dict):
        raise FileFormatError(f"{optim_path}: not an optimizer sidecar (no optimizer_state_dict dict)")
    if not os.path.isfile(pt_path):
        raise FileFormatError(f"{pt_path}: no such file (its optimizer sidecar exists)")
    expected = sha256_file(pt_path)[:10]
    if sidecar.get("hash") != expected:
        # Same rule as A1111: the state belongs to another version of the .pt; start afresh.
        log.info(
            "dropping %s: hash %r does not match the .pt's %r", optim_path, sidecar.get("hash"), expected
        )
        return None
    if optimizer_name is not None and sidecar.get("optimizer_name") != optimizer_name:
        log.info(
            "dropping %s: it is for %r, not %r", optim_path, sidecar.get("optimizer_name"), optimizer_name
        )
        return None
    state: dict[str, Any] = sidecar["optimizer_state_dict"]
    return state


def zip_entry_problems(path: str | os.PathLike[str]) -> list[str]:
    """Zip entries A1111's safe loader refuses, and compressed entries, of a .pt file."""
    problems: list[str] = []
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if ALLOWED_ENTRY.match(info.filename) is None:
                problems.append(f"entry {info.filename!r} is not data.pkl, version or data/<n>")
            elif info.compress_type != zipfile.ZIP_STORED:
                problems.append(f"entry {info.filename!r} is compressed")
    return problems


def comfyui_layer_kinds(parsed: ParsedFile) -> list[str]:
    """The layers ComfyUI builds for each module of a parsed file ("linear", "activation", ...).

    Re-expresses ComfyUI's rule (comfy_extras/nodes_hypernetwork.py, load_hypernetwork_patch): it
    reads the flags with its own defaults (activate_output False), walks the ``.weight`` keys in
    order, one per Linear plus one per LayerNorm, and calls a Linear "last" or "penultimate" by its
    position among those keys. Dropout (p=0.3) comes from use_dropout/last_layer_dropout, never from
    dropout_structure, and stays active because ComfyUI never calls eval().
    """
    stored = parsed.stored
    options = parsed.hypernetwork.options
    activation = stored.get("activation_func", "linear")
    activate_output = stored.get("activate_output", False) is True
    use_dropout = stored.get("use_dropout", False) is True
    last_layer_dropout = stored.get("last_layer_dropout", False) is True
    n_keys = (len(options.layer_structure) - 1) * (2 if options.is_layer_norm else 1)
    kinds: list[str] = []
    i = 0
    while i < n_keys:
        last, penultimate = i == n_keys - 1, i == n_keys - 2
        kinds.append("linear")
        if activation != "linear" and (not last or activate_output):
            kinds.append("activation")
        if options.is_layer_norm:
            i += 1  # the LayerNorm's weight key
            kinds.append("layer_norm")
        if use_dropout and not last and (not penultimate or last_layer_dropout):
            kinds.append("dropout")
        i += 1
    return kinds


def _reasons_not_same(fmt: str, parsed: ParsedFile, zip_problems: list[str]) -> list[str]:
    """Why A1111 and ComfyUI would not both load this file and compute the same function."""
    options = parsed.hypernetwork.options
    reasons: list[str] = []
    if fmt == "safetensors":
        reasons.append("A1111 and ComfyUI load hypernetworks from .pt files only: convert it to .pt first")
    reasons += [f"A1111's safe loader refuses the file: {p}" for p in zip_problems]
    # Both programs look the name up exactly; a missing key means no activation in both.
    activation = parsed.stored.get("activation_func", "linear")
    if activation is None:
        reasons.append(
            "activation_func is None: A1111 reads it as linear but ComfyUI refuses the file (write 'linear')"
        )
    elif activation not in ALLOWED_ACTIVATIONS:
        reasons.append(
            f"activation_func {activation!r}: A1111 and ComfyUI match names exactly and refuse it "
            f"(write {options.activation_func!r})"
        )
    comfy = comfyui_layer_kinds(parsed)
    if "dropout" in comfy:
        reasons.append(
            "ComfyUI builds Dropout layers from use_dropout/last_layer_dropout and never switches to eval, "
            "so its dropout stays active; write a release file (convert --release)"
        )
    # In eval, A1111's Dropout layers are identity: compare the layers that compute something.
    ours = [
        layer.kind for layer in options.sequential_layout(options.enable_sizes[0]) if layer.kind != "dropout"
    ]
    if [kind for kind in comfy if kind != "dropout"] != ours:
        stored_output = parsed.stored.get("activate_output")
        reasons.append(
            "ComfyUI applies the activation after different Linear layers than A1111: it reads "
            f"activate_output as {bool(stored_output)}"
            + (" (missing: A1111 defaults it to true, ComfyUI to false)" if stored_output is None else "")
            + (" and counts LayerNorm weights as layers" if options.is_layer_norm else "")
        )
    if not parsed.keys_ordered:
        reasons.append(
            "state-dict keys are not in ascending layer order: ComfyUI rebuilds layers in key order"
        )
    return reasons


def inspect_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe a hypernetwork file as JSON-able data: metadata, layout, sizes, compatibility, warnings."""
    fmt, parsed = read_any(path)
    hn = parsed.hypernetwork
    options = hn.options
    zip_problems = zip_entry_problems(path) if fmt == "pt" else []
    reasons = _reasons_not_same(fmt, parsed, zip_problems)
    warnings = list(options.warnings())
    if parsed.defaulted and parsed.layout != "legacy":
        warnings.append(f"metadata keys missing, A1111's defaults used: {parsed.defaulted}")
    if parsed.unknown_keys:
        warnings.append(f"unknown keys ignored: {parsed.unknown_keys}")
    if hn.name != Path(path).stem:
        warnings.append(f"the stored name {hn.name!r} differs from the file's base name {Path(path).stem!r}")
    if parsed.dtypes - {"float32"}:
        warnings.append(f"tensors stored as {sorted(parsed.dtypes)}: both programs load them as float32")
    warnings += parsed.notes
    metadata = {
        "step": hn.step,
        "name": hn.name,
        **{k: v for k, v in options.as_metadata().items() if k != "enable_sizes"},
        "sd_checkpoint": hn.sd_checkpoint,
        "sd_checkpoint_name": hn.sd_checkpoint_name,
        "optional_info": hn.optional_info,
    }
    return {
        "path": os.fspath(path),
        "format": fmt,
        "bytes": os.path.getsize(path),
        "sha256": sha256_file(path),
        "layout": parsed.layout,
        "metadata": metadata,
        "metadata_defaulted": parsed.defaulted,
        "widths": list(hn.widths()),
        "parameter_count": options.parameter_count(),
        "loads_same_in_a1111_and_comfyui": not reasons,
        "reasons": reasons,
        "warnings": warnings,
    }
