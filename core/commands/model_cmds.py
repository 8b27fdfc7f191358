"""``hyperforge make-tiny-model``: write a deterministic tiny Stable Diffusion model for tests and demos."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

ARCHES = ("sd1", "sd2", "sdxl")


def register(subparsers: Any) -> None:
    """Add the make-tiny-model subcommand."""
    parser = subparsers.add_parser(
        "make-tiny-model",
        help="write a tiny, deterministic Stable Diffusion model (diffusers folder)",
        description=(
            "Write a complete tiny diffusers folder (real CLIP tokenizer, toy-width UNet, VAE and text "
            "encoders) into DIR; --single-file also writes DIR/model.safetensors in the original layout."
        ),
    )
    parser.add_argument("directory", type=Path, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--arch", choices=ARCHES, default="sd1", help="architecture to imitate (sd1)")
    parser.add_argument(
        "--single-file", action="store_true", help="also write DIR/model.safetensors (original key layout)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="weights seed; the same seed gives the same files"
    )
    parser.set_defaults(func=_make_tiny_model)


def _make_tiny_model(args: argparse.Namespace) -> int:
    from core.models.tiny import make_tiny_model  # torch and diffusers load only when run

    path = make_tiny_model(args.directory, arch=args.arch, single_file=args.single_file, seed=args.seed)
    print(path)
    return 0
