"""``hyperforge sample``: render prompts with hypernetworks at chosen strengths into a labelled PNG grid.

Every option is checked before the model is loaded, and a refused option writes no file.
Rows are the prompts (all with the same seed, so columns compare fairly); columns are the
``--strengths`` (each network's own ``FILE:strength`` times the column's value), or a single
column when ``--strengths`` is not given.
"""

from __future__ import annotations

import argparse
import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InvalidOptionError

DEFAULT_STRENGTHS = "1"


@dataclass(frozen=True)
class HypernetworkArg:
    """One ``--hypernetwork FILE[:strength]`` value."""

    path: Path
    strength: float


def _fail(option: str, message: str) -> InvalidOptionError:
    return InvalidOptionError(f"{option}: {message}", option=option)


def _number(text: str, option: str) -> float:
    """Parse a finite float, naming ``option`` when it is not one."""
    try:
        value = float(text)
    except ValueError:
        raise _fail(option, f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise _fail(option, f"{text!r} is not a finite number")
    return value


def _integer(text: str, option: str) -> int:
    """Parse an integer, naming ``option`` when it is not one."""
    try:
        return int(text)
    except ValueError:
        raise _fail(option, f"{text!r} is not an integer") from None


def _strength(text: str, option: str) -> float:
    value = _number(text, option)
    if value < 0:
        raise _fail(option, f"strength must be >= 0, got {text}")
    return value


def parse_hypernetwork(value: str) -> HypernetworkArg:
    """Parse ``FILE[:strength]``; the file must exist (a path containing ':' is taken whole if it does)."""
    option = "--hypernetwork"
    path, strength = Path(value), 1.0
    if not path.is_file() and ":" in value:
        name, _, suffix = value.rpartition(":")
        path, strength = Path(name), _strength(suffix, option)
    if not path.is_file():
        raise _fail(option, f"no such file: {str(path)!r}")
    return HypernetworkArg(path, strength)


def parse_strengths(value: str) -> list[float]:
    """Parse ``--strengths 0,0.5,1`` into a non-empty list of non-negative numbers."""
    parts = [part.strip() for part in value.split(",")]
    if not value.strip() or any(not part for part in parts):
        raise _fail("--strengths", f"expected comma-separated numbers such as 0,0.5,1, got {value!r}")
    return [_strength(part, "--strengths") for part in parts]


def register(subparsers: Any) -> None:
    """Add the ``sample`` subcommand."""
    p = subparsers.add_parser(
        "sample",
        help="render prompts with hypernetworks into a labelled PNG grid",
        description=(
            "Render prompts (rows, all with one seed) with hypernetworks stacked at FILE:STRENGTH, "
            "scaled by each --strengths value (columns), into a labelled PNG grid whose 'parameters' "
            "text A1111's PNG Info reads. Options are checked first: a refused option writes no file."
        ),
    )
    p.add_argument("--model", required=True, help="diffusers model folder or single-file checkpoint")
    p.add_argument("--arch", choices=("sd1", "sd2", "sdxl"), help="model architecture (default: detect)")
    p.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), help="default: detect")
    p.add_argument(
        "--hypernetwork",
        action="append",
        default=[],
        metavar="FILE[:STRENGTH]",
        help="hypernetwork file (.pt or .safetensors) and strength (default 1); repeat to stack",
    )
    p.add_argument("--prompt", action="append", required=True, help="a prompt (one grid row); repeatable")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--seed", default="1", help="seed of every cell; -1 picks one at random (default 1)")
    p.add_argument("--steps", default="20")
    p.add_argument("--sampler", default="euler_a", help="euler_a, euler, dpm++_2m, dpm++_2m_karras, ddim")
    p.add_argument("--cfg-scale", default="7")
    p.add_argument("--width", default="512")
    p.add_argument("--height", default="512")
    p.add_argument("--strengths", help="columns: multipliers of every network's strength, e.g. 0,0.5,1")
    p.add_argument("--title", default="", help="title above the grid")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--out", required=True, help="the grid's PNG path")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run)


def _requests(args: argparse.Namespace) -> list[Any]:
    """Build the SampleRequests, re-labelling errors with the CLI's option names."""
    from core.sampling import SampleRequest

    seed = _integer(args.seed, "--seed")
    if seed == -1:
        seed = secrets.randbelow(2**32)
    try:
        return [
            SampleRequest(
                prompt=prompt,
                negative_prompt=args.negative_prompt,
                seed=seed,
                steps=_integer(args.steps, "--steps"),
                sampler=args.sampler,
                cfg_scale=_number(args.cfg_scale, "--cfg-scale"),
                width=_integer(args.width, "--width"),
                height=_integer(args.height, "--height"),
            )
            for prompt in args.prompt
        ]
    except InvalidOptionError as exc:
        if exc.option is None or exc.option.startswith("--"):
            raise
        flag = "--" + exc.option.replace("_", "-")
        raise InvalidOptionError(exc.message.replace(exc.option, flag, 1), option=flag) from None


def run(args: argparse.Namespace) -> int:
    """Check every option, load the model and hypernetworks, render the grid and write it."""
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise _fail("--out", f"must end in .png, got {str(out)!r}")
    if out.is_dir():
        raise _fail("--out", f"{str(out)!r} is a directory")
    if out.exists() and not args.overwrite:
        raise _fail("--out", f"{str(out)!r} exists (pass --overwrite to replace it)")
    if not any(prompt.strip() for prompt in args.prompt):
        raise _fail("--prompt", "needs at least one non-empty prompt")
    requests = _requests(args)
    networks = [parse_hypernetwork(value) for value in args.hypernetwork]
    if args.strengths is not None and not networks:
        raise _fail("--strengths", "needs at least one --hypernetwork")
    strengths = parse_strengths(args.strengths or DEFAULT_STRENGTHS)

    import torch

    from core.hypernetwork.fileformat import load_any
    from core.models import load_base_model
    from core.sampling import comparison, strength_grid

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise _fail("--device", "CUDA is not available on this machine")
    dtype = torch.float16 if device == "cuda" else torch.float32
    stack = []
    for arg in networks:
        network = load_any(arg.path)
        network.strength = arg.strength
        stack.append(network.to(device))
    model = load_base_model(
        args.model, arch=args.arch, prediction_type=args.prediction_type, device=device, dtype=dtype
    )
    if stack:
        grid = strength_grid(model, requests, stack, strengths, args.title)
    else:
        grid = comparison(model, requests, [], title=args.title)
    grid.save(out)
    print(out)
    return 0
