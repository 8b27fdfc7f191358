"""``hyperforge preprocess`` and ``hyperforge make-demo-dataset``."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add the data subcommands to the CLI."""
    _add_preprocess(subparsers)
    demo = subparsers.add_parser(
        "make-demo-dataset",
        help="write a small synthetic dataset in a distinct style (PNG + .txt captions)",
        description="Write COUNT synthetic images of the 'hatchwork' style with captions; "
        "the same seed always writes the same files.",
    )
    demo.add_argument("directory", metavar="DIR")
    demo.add_argument("--count", type=int, default=24, help="number of images (default 24)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--size", type=int, default=64, help="side in pixels, a multiple of 8 (default 64)")
    demo.set_defaults(func=_run_demo)


def _add_preprocess(subparsers: Any) -> None:
    """The ``preprocess`` subcommand and its A1111-named options."""
    p = subparsers.add_parser(
        "preprocess",
        help="crop/resize a folder of images for training, as A1111's Preprocess tab",
        description="Write SRC's images into DST as {index:05}-{n}-{name}.png (+ .txt captions): split "
        "oversized images, focal-point or auto-sized crops, else scale-to-cover and centre-crop.",
    )
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument(
        "--caption-action",
        choices=("ignore", "copy", "prepend", "append"),
        default="ignore",
        help="what to do with a SRC .txt caption beside an image (default ignore)",
    )
    p.add_argument("--flip", action="store_true", help="also write a mirrored copy of every output")
    p.add_argument("--split", action="store_true", help="split oversized images into overlapping crops")
    p.add_argument("--split-threshold", type=float, default=0.5)
    p.add_argument("--overlap-ratio", type=float, default=0.2)
    p.add_argument("--focal-crop", action="store_true", help="crop non-square images around a focal point")
    p.add_argument(
        "--focal-face-weight",
        type=float,
        default=0.9,
        help="ignored unless a face detector is given (none ships: no face model can be had offline)",
    )
    p.add_argument("--focal-entropy-weight", type=float, default=0.15)
    p.add_argument("--focal-edges-weight", type=float, default=0.5)
    p.add_argument("--auto-crop", action="store_true", help="centre-crop to the best size within the bounds")
    p.add_argument("--autocrop-min", type=int, default=384)
    p.add_argument("--autocrop-max", type=int, default=768)
    p.add_argument("--autocrop-area-min", type=int, default=64 * 64)
    p.add_argument("--autocrop-area-max", type=int, default=640 * 640)
    p.add_argument("--autocrop-threshold", type=float, default=0.1)
    p.add_argument(
        "--autocrop-objective", choices=("maximize_area", "minimize_error"), default="maximize_area"
    )
    p.add_argument(
        "--tagger", metavar="DIR", help="a WD14-style tagger folder: model.onnx + selected_tags.csv"
    )
    p.add_argument("--tag-threshold", type=float, default=0.35, help="general tag threshold (default 0.35)")
    p.add_argument("--character-threshold", type=float, default=0.85)
    p.add_argument("--exclude-tags", default="", help="comma-separated tags never to write")
    p.add_argument(
        "--tag-action",
        choices=("append", "prepend", "replace"),
        default=None,
        help="tags after/before the kept caption, or alone (default: follows --caption-action)",
    )
    p.set_defaults(func=_run_preprocess)


def _run_preprocess(args: argparse.Namespace) -> int:
    """Run preprocessing and print a summary."""
    from core.preprocess.crops import AutocropSettings
    from core.preprocess.focal import FocalWeights
    from core.preprocess.pipeline import PreprocessOptions, preprocess_folder
    from core.preprocess.tagger import WD14Tagger

    options = PreprocessOptions(
        width=args.width,
        height=args.height,
        caption_action=args.caption_action,
        flip=args.flip,
        split=args.split,
        split_threshold=args.split_threshold,
        overlap_ratio=args.overlap_ratio,
        focal_crop=args.focal_crop,
        focal_weights=FocalWeights(
            args.focal_face_weight, args.focal_entropy_weight, args.focal_edges_weight
        ),
        auto_crop=args.auto_crop,
        autocrop=AutocropSettings(
            min_dim=args.autocrop_min,
            max_dim=args.autocrop_max,
            min_area=args.autocrop_area_min,
            max_area=args.autocrop_area_max,
            threshold=args.autocrop_threshold,
            objective=args.autocrop_objective,
        ),
        general_threshold=args.tag_threshold,
        character_threshold=args.character_threshold,
        exclude_tags=tuple(t.strip() for t in args.exclude_tags.split(",") if t.strip()),
        tag_action=args.tag_action,
    )
    tagger = WD14Tagger.from_dir(args.tagger) if args.tagger else None
    result = preprocess_folder(args.src, args.dst, options, tagger=tagger)
    print(f"wrote {len(result.images)} image(s) and {len(result.captions)} caption(s) to {args.dst}")
    for skip in result.skipped:
        print(f"skipped {skip.file}: {skip.code}: {skip.detail}")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    """Write the demo dataset and print where."""
    from core.data.demo import write_demo_dataset

    paths = write_demo_dataset(args.directory, count=args.count, seed=args.seed, size=args.size)
    print(f"wrote {len(paths)} image(s) with captions to {args.directory}")
    return 0
