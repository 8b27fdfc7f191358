"""A WD14-style ONNX tagger from a local folder (``model.onnx`` + ``selected_tags.csv``).

The CSV has columns ``tag_id,name,category,count``; category 9 is a rating, 0 a
general tag, 4 a character. Input is what WD14 models expect: the image on white
(alpha flattened), BGR channel order, padded to a white square, resized to the
model's side, NHWC float32 in 0..255. Nothing is downloaded: the folder must
already hold both files.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from PIL import Image

from core.errors import InvalidOptionError, ModelLoadError

CATEGORY_GENERAL: Final = 0
CATEGORY_CHARACTER: Final = 4
CATEGORY_RATING: Final = 9
DEFAULT_SIDE: Final = 448
# Emoticons whose underscores are part of the face, so they keep them.
KAOMOJIS: Final = frozenset(
    {"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o",
     "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"}
)  # fmt: skip


@dataclass(frozen=True)
class TagScores:
    """Scores of one image: ratings, general tags and characters, each as (name, score)."""

    ratings: tuple[tuple[str, float], ...]
    general: tuple[tuple[str, float], ...]
    character: tuple[tuple[str, float], ...]


def tag_to_text(name: str) -> str:
    """A tag as caption text: underscores become spaces, except inside kaomoji."""
    return name if name in KAOMOJIS else name.replace("_", " ")


class WD14Tagger:
    """An ONNX tagger session with its tag table."""

    def __init__(self, model_path: Path, names: list[str], categories: list[int]) -> None:
        import onnxruntime as ort  # here, so importing core.preprocess stays light

        try:
            self.session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"cannot load tagger model {model_path}: {exc}") from exc
        inp = self.session.get_inputs()[0]
        if len(inp.shape) != 4:
            raise ModelLoadError(f"tagger input must be NHWC, got shape {inp.shape}")
        side = inp.shape[1]
        self.input_name = inp.name
        self.side = side if isinstance(side, int) and side > 0 else DEFAULT_SIDE
        out = self.session.get_outputs()[0]
        width = out.shape[-1]
        if isinstance(width, int) and width != len(names):
            raise ModelLoadError(f"the model scores {width} tags but selected_tags.csv lists {len(names)}")
        self.names = names
        self.categories = np.asarray(categories)

    @classmethod
    def from_dir(cls, directory: str | Path) -> WD14Tagger:
        """Load ``model.onnx`` and ``selected_tags.csv`` from a local folder."""
        d = Path(directory)
        model, table = d / "model.onnx", d / "selected_tags.csv"
        for f in (model, table):
            if not f.is_file():
                needs = "the tagger folder needs model.onnx and selected_tags.csv"
                raise InvalidOptionError(f"{f} not found ({needs})", option="tagger")
        names, categories = read_tag_table(table)
        return cls(model, names, categories)

    def prepare(self, image: Image.Image) -> np.ndarray:
        """The model input for one image: (1, side, side, 3) float32 BGR in 0..255."""
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat.alpha_composite(rgba)
        rgb = flat.convert("RGB")
        # Pad to a white square at least ``side`` wide (small images are padded, not enlarged).
        square = max(rgb.width, rgb.height, self.side)
        canvas = Image.new("RGB", (square, square), (255, 255, 255))
        canvas.paste(rgb, ((square - rgb.width) // 2, (square - rgb.height) // 2))
        if square != self.side:
            resample = Image.Resampling.BOX if square > self.side else Image.Resampling.BICUBIC
            canvas = canvas.resize((self.side, self.side), resample)
        bgr = np.asarray(canvas, dtype=np.float32)[:, :, ::-1]
        return np.ascontiguousarray(bgr)[None]

    def score(self, image: Image.Image) -> TagScores:
        """Run the model on one image."""
        probs = np.asarray(self.session.run(None, {self.input_name: self.prepare(image)})[0])[0]

        def pick(category: int) -> tuple[tuple[str, float], ...]:
            """(name, score) of one category, highest first."""
            idx = np.nonzero(self.categories == category)[0]
            pairs = [(self.names[i], float(probs[i])) for i in idx]
            return tuple(sorted(pairs, key=lambda p: -p[1]))

        return TagScores(pick(CATEGORY_RATING), pick(CATEGORY_GENERAL), pick(CATEGORY_CHARACTER))

    def tags(
        self,
        image: Image.Image,
        general_threshold: float = 0.35,
        character_threshold: float = 0.85,
        exclude: Iterable[str] = (),
    ) -> list[str]:
        """Caption tags: characters then general tags, each above its threshold, highest score first."""
        scores = self.score(image)
        excluded = {e.strip().lower() for e in exclude if e.strip()}
        excluded |= {e.replace("_", " ") for e in excluded}
        # Strictly above the threshold, as the WD14 reference code does.
        chosen = [n for n, s in scores.character if s > character_threshold]
        chosen += [n for n, s in scores.general if s > general_threshold]
        out = []
        for name in chosen:
            text = tag_to_text(name)
            if name.lower() not in excluded and text.lower() not in excluded:
                out.append(text)
        return out


def read_tag_table(path: Path) -> tuple[list[str], list[int]]:
    """Names and categories from ``selected_tags.csv`` (columns tag_id,name,category,count)."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not rows or "name" not in rows[0] or "category" not in rows[0]:
        raise ModelLoadError(f"{path} needs the columns tag_id,name,category,count")
    try:
        return [r["name"] for r in rows], [int(r["category"]) for r in rows]
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: a category is not an integer: {exc}") from exc
