"""The ``hyperforge`` command line.

Core's own commands are registered from ``CORE_COMMANDS``; the service's
commands (``serve``, ``worker``, ``local``, ``admin``, ``jobs``, ``demo``) live
in ``api``/``worker`` and plug in through the ``hyperforge.commands`` entry-point
group, so core never imports them. Each command module exposes
``register(subparsers)`` which adds a subparser whose ``func`` default takes the
parsed namespace and returns an exit code. Heavy imports (torch, diffusers)
happen inside the command functions so ``hyperforge --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from core.errors import HyperforgeError

# Modules inside core that provide subcommands (each has ``register``).
CORE_COMMANDS: tuple[str, ...] = (
    "core.commands.hypernetwork_cmds",
    "core.commands.model_cmds",
    "core.commands.data_cmds",
    "core.commands.train_cmds",
    "core.commands.sample_cmds",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="hyperforge",
        description="Train AUTOMATIC1111-compatible Stable Diffusion hypernetworks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in CORE_COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a command group not built yet
            if exc.name != name:
                raise
            continue
        module.register(sub)
    for ep in entry_points(group="hyperforge.commands"):
        ep.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hyperforge`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except HyperforgeError as exc:
        print(f"hyperforge {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
