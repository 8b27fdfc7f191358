"""``hyperforge train``: train a hypernetwork from a model and a dataset, with a progress bar."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from core.errors import InvalidOptionError


def register(subparsers: Any) -> None:
    """Add the ``train`` subcommand to the CLI."""
    p = subparsers.add_parser(
        "train",
        help="train a hypernetwork (A1111 semantics) on a dataset folder or zip",
        description="Train into --out: hypernetworks/<name>-<step>.pt checkpoints, samples/, loss.csv, "
        "loss.png, training_config.json and the release file <name>.pt. --spec is the service's "
        "training spec (JSON); the flags override it. --resume DIR continues a stopped run exactly. "
        "Ctrl-C saves a checkpoint and stops (press it twice to abort).",
    )
    p.add_argument("--model", type=Path, help="base model: diffusers folder or .safetensors/.ckpt file")
    p.add_argument("--data", type=Path, help="dataset folder or zip")
    p.add_argument("--out", type=Path, help="run directory")
    p.add_argument("--name", help="hypernetwork name (file base name)")
    p.add_argument("--spec", type=Path, help="training spec JSON file")
    p.add_argument("--steps", type=int)
    p.add_argument("--learn-rate", help='A1111 schedule, e.g. "5e-6" or "5e-5:100, 5e-6:1500, 5e-7"')
    p.add_argument("--batch-size", type=int)
    p.add_argument("--save-every", type=int, help="checkpoint every N steps (0: only at the end)")
    p.add_argument("--sample-every", type=int, help="preview grid every N steps (0: only the final grid)")
    p.add_argument("--seed", type=int)
    p.add_argument("--hypernetwork", type=Path, help="continue training this A1111 .pt (its .optim too)")
    p.add_argument("--resume", type=Path, metavar="DIR", help="resume a stopped run directory")
    p.set_defaults(func=_run)


def _spec_data(args: argparse.Namespace) -> dict[str, Any]:
    """The spec file (if any) with the flags applied on top."""
    data: dict[str, Any] = {}
    if args.spec is not None:
        try:
            data = json.loads(args.spec.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidOptionError(f"cannot read {args.spec}: {exc}", option="spec") from None
        if not isinstance(data, dict):
            raise InvalidOptionError(f"{args.spec} must hold a JSON object", option="spec")
    overrides = {
        ("training", "steps"): args.steps,
        ("training", "learn_rate"): args.learn_rate,
        ("training", "batch_size"): args.batch_size,
        ("training", "seed"): args.seed,
        ("checkpoints", "save_every"): args.save_every,
        ("samples", "every"): args.sample_every,
    }
    for (section, key), value in overrides.items():
        if value is not None:
            data.setdefault(section, {})[key] = value
    if args.name is not None:
        data["name"] = args.name
    if args.model is not None:
        data["base_model"] = str(args.model)
    if args.data is not None:
        data["dataset_id"] = str(args.data)
    if args.hypernetwork is not None:
        data["init_from"] = str(args.hypernetwork)
    return data


def _run(args: argparse.Namespace) -> int:
    from core.spec import parse_spec, spec_warnings
    from core.training.progress import ProgressBar
    from core.training.run import resume_run, start_run

    bar = ProgressBar()
    previous = signal.signal(signal.SIGINT, _interrupt_handler(bar))
    try:
        if args.resume is not None:
            if args.spec or args.learn_rate or args.batch_size or args.seed is not None or args.hypernetwork:
                raise InvalidOptionError(
                    "--resume continues a run exactly as it was configured; only --steps, --model and "
                    "--data may be given with it",
                    option="resume",
                )
            end = resume_run(
                args.resume, steps=args.steps, model_path=args.model, data_path=args.data, callbacks=[bar]
            )
        else:
            missing = [f"--{n}" for n in ("model", "data", "out", "name") if getattr(args, n) is None]
            if missing:
                raise InvalidOptionError(f"{', '.join(missing)} required (or --resume DIR)", option="train")
            spec = parse_spec(_spec_data(args))
            for warning in spec_warnings(spec):
                print(f"warning: {warning}", file=sys.stderr)
            end = start_run(
                spec, args.model, args.data, args.out, init_from=args.hypernetwork, callbacks=[bar]
            )
    finally:
        signal.signal(signal.SIGINT, previous)
    state = f"stopped ({end.reason})" if end.stopped else "finished"
    print(f"{state} at step {end.step}; release file: {end.final_path}")
    return 0


def _interrupt_handler(bar: Any) -> Any:
    def handle(signum: int, frame: FrameType | None) -> None:
        if bar.interrupted:  # a second Ctrl-C aborts at once
            raise KeyboardInterrupt
        bar.interrupted = True
        print("\ninterrupted: saving a checkpoint after this step (Ctrl-C again to abort)", file=sys.stderr)

    return handle
