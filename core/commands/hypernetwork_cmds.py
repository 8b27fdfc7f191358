"""``hyperforge create | inspect | convert``: make, describe and convert hypernetwork files.

Options are validated before anything is written: a bad option exits with code 2 and a
message naming it (a ``HyperforgeError`` rendered by ``core.cli``), and no file appears.
torch is imported inside the commands so ``hyperforge --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from core.errors import InvalidOptionError
from core.hypernetwork.options import (
    ALLOWED_ACTIVATIONS,
    ALLOWED_INITIALIZATIONS,
    DEFAULT_ENABLE_SIZES,
    HypernetworkOptions,
    validate_name,
)

_EXTENSIONS = (".pt", ".safetensors")


def register(subparsers: Any) -> None:
    """Add the create, inspect and convert subcommands."""
    create = subparsers.add_parser(
        "create",
        help="create a new, untrained hypernetwork file",
        description="Create a new hypernetwork with A1111's options and write it as .pt or .safetensors.",
    )
    create.add_argument("name", help="the hypernetwork's name (the output file's base name)")
    create.add_argument("--out", required=True, help="output file: NAME.pt or NAME.safetensors")
    create.add_argument("--layer-structure", default="1,2,1", help="multipliers, first and last 1 (1,2,1)")
    create.add_argument(
        "--activation-func", default="linear", help=f"one of {', '.join(sorted(ALLOWED_ACTIVATIONS))}"
    )
    create.add_argument(
        "--weight-init", default="Normal", help=f"one of {', '.join(sorted(ALLOWED_INITIALIZATIONS))}"
    )
    create.add_argument("--layer-norm", action="store_true", help="LayerNorm after every Linear")
    create.add_argument("--use-dropout", action="store_true", help="dropout 0.3 after hidden layers")
    create.add_argument("--dropout-structure", help="explicit rates, one per layer_structure entry (0,0.3,0)")
    create.add_argument(
        "--last-layer-dropout", action="store_true", help="dropout before the last Linear too"
    )
    create.add_argument("--activate-output", action="store_true", help="activation after the last Linear too")
    create.add_argument(
        "--enable-sizes",
        default=",".join(str(w) for w in DEFAULT_ENABLE_SIZES),
        help="context widths to build modules for (768,320,640,1280 for SD1)",
    )
    create.add_argument("--seed", type=int, help="seed of the initial weights")
    create.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    create.set_defaults(func=run_create)

    inspect = subparsers.add_parser(
        "inspect",
        help="describe a hypernetwork file as JSON",
        description="Describe a .pt or .safetensors file.",
    )
    inspect.add_argument("file", help="a .pt or .safetensors hypernetwork")
    inspect.set_defaults(func=run_inspect)

    convert = subparsers.add_parser(
        "convert",
        help="convert between .pt and .safetensors, or to the release layout",
        description="Convert a hypernetwork file; the output format follows OUT's extension.",
    )
    convert.add_argument("input", help="a .pt or .safetensors hypernetwork")
    convert.add_argument("output", help="OUT.pt or OUT.safetensors")
    convert.add_argument(
        "--release", action="store_true", help="write without Dropout (for A1111/ComfyUI use)"
    )
    convert.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    convert.set_defaults(func=run_convert)


def _numbers(option: str, text: str | None, kind: type[float] | type[int]) -> list[Any] | None:
    """Parse "1,2,1" into numbers; the error names the option."""
    if text is None:
        return None
    try:
        return [kind(part.strip()) for part in text.split(",")]
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise InvalidOptionError(f"{text!r} is not a comma-separated list of {noun}", option=option) from None


def _check_output(path: str, overwrite: bool, option: str) -> None:
    """Refuse an output we cannot or should not write, before any work is done."""
    target = Path(path)
    if target.suffix not in _EXTENSIONS:
        raise InvalidOptionError(f"{path!r} must end with .pt or .safetensors", option=option)
    if not target.parent.is_dir():
        raise InvalidOptionError(f"directory {str(target.parent)!r} does not exist", option=option)
    if target.exists() and not overwrite:
        raise InvalidOptionError(f"{path!r} exists (pass --overwrite to replace it)", option=option)


def _save(hn: Any, path: str, release: bool) -> str:
    from core.hypernetwork.fileformat import save_pt, save_safetensors

    if Path(path).suffix == ".safetensors":
        return save_safetensors(hn, path, release=release)
    return save_pt(hn, path, release=release)


def run_create(args: argparse.Namespace) -> int:
    """Validate the options, build a new hypernetwork and write it."""
    name = validate_name(args.name)
    options = HypernetworkOptions.create(
        layer_structure=_numbers("layer_structure", args.layer_structure, float) or (),
        activation_func=args.activation_func,
        weight_initialization=args.weight_init,
        is_layer_norm=args.layer_norm,
        use_dropout=args.use_dropout,
        dropout_structure=_numbers("dropout_structure", args.dropout_structure, float),
        last_layer_dropout=args.last_layer_dropout,
        activate_output=args.activate_output,
        enable_sizes=_numbers("enable_sizes", args.enable_sizes, int) or (),
    )
    _check_output(args.out, args.overwrite, "out")
    if Path(args.out).stem != name:
        # A1111 shows the file's base name; the stored name must be the same (spec §3).
        raise InvalidOptionError(
            f"the file's base name must be the name {name!r}: use {name}.pt", option="out"
        )
    from core.hypernetwork.module import Hypernetwork

    hn = Hypernetwork.new(name, options, seed=args.seed)
    digest = _save(hn, args.out, release=False)
    summary = {
        "path": args.out,
        "sha256": digest,
        "bytes": os.path.getsize(args.out),
        "parameter_count": options.parameter_count(),
        "warnings": options.warnings(),
    }
    print(json.dumps(summary, indent=2))
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    """Print a file's description as JSON."""
    from core.hypernetwork.fileformat import inspect_file

    print(json.dumps(inspect_file(args.file), indent=2))
    return 0


def run_convert(args: argparse.Namespace) -> int:
    """Load any hypernetwork file and write it in the format of OUT's extension."""
    from core.hypernetwork.fileformat import load_any

    _check_output(args.output, args.overwrite, "output")
    hn = load_any(args.input)
    digest = _save(hn, args.output, release=args.release)
    print(
        json.dumps({"path": args.output, "sha256": digest, "bytes": os.path.getsize(args.output)}, indent=2)
    )
    return 0
