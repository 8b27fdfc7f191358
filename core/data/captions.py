"""Caption rules: reading ``.txt`` captions, names as captions, tag shuffling and drop-out; torch-free."""

from __future__ import annotations

import posixpath
import random
import re
from collections.abc import Callable
from typing import Final

from core.errors import InvalidOptionError

# A1111's rule (modules/textual_inversion/dataset.py, ``re_numbers_at_start``): digits and dashes
# at the start of the name, then any whitespace. "00012-0-a cat" -> "a cat", "2girls" -> "girls".
RE_NUMBERS_AT_START: Final = re.compile(r"^[-\d]+\s*")
_WHITESPACE: Final = re.compile(r"\s+")
# A rough CLIP token count: every word and every punctuation mark is at least one BPE token.
_TOKENISH: Final = re.compile(r"\w+|[^\w\s]")
CLIP_MAX_TOKENS: Final = 75

TokenCounter = Callable[[str], int]


def normalize_caption(text: str) -> str:
    """Strip a BOM and collapse every run of whitespace (newlines included) into one space."""
    return _WHITESPACE.sub(" ", text.lstrip("\ufeff")).strip()


def read_caption_bytes(data: bytes) -> tuple[str, bool]:
    """Decode caption file bytes as UTF-8 (BOM stripped); return (caption, decoded_cleanly)."""
    try:
        return normalize_caption(data.decode("utf-8-sig")), True
    except UnicodeDecodeError:
        # Keep what can be read; the report says the file was not valid UTF-8.
        return normalize_caption(data.decode("utf-8-sig", errors="replace")), False


def caption_from_filename(filename: str) -> str:
    """A1111's caption for an image without ``.txt``: the base name, extension and leading numbers removed."""
    stem = posixpath.splitext(posixpath.basename(filename.replace("\\", "/")))[0]
    return normalize_caption(RE_NUMBERS_AT_START.sub("", stem))


def estimate_tokens(text: str, count_tokens: TokenCounter | None = None) -> int:
    """Tokens in ``text``: the given tokenizer's count, else words plus punctuation marks (a lower bound)."""
    if count_tokens is not None:
        return int(count_tokens(text))
    return len(_TOKENISH.findall(text))


def split_tags(caption: str) -> list[str]:
    """The comma-separated parts of a caption, stripped, empty parts dropped."""
    return [part.strip() for part in caption.split(",") if part.strip()]


def join_tags(tags: list[str]) -> str:
    """Join caption parts back with ``", "``."""
    return ", ".join(tags)


def shuffle_tags(caption: str, rng: random.Random) -> str:
    """Shuffle the comma-separated parts of ``caption`` with ``rng``."""
    tags = split_tags(caption)
    rng.shuffle(tags)
    return join_tags(tags)


def tag_drop_out(caption: str, p: float, rng: random.Random) -> str:
    """Drop each comma-separated part with probability ``p`` (A1111's ``tag_drop_out``)."""
    check_probability(p)
    if p == 0.0:
        return join_tags(split_tags(caption))
    return join_tags([tag for tag in split_tags(caption) if rng.random() >= p])


def check_probability(p: float) -> None:
    """Refuse a drop-out probability outside [0, 1]."""
    if not 0.0 <= p <= 1.0:
        raise InvalidOptionError(f"must be within [0, 1], got {p}", option="tag_drop_out")


def fill_template(line: str, filewords: str, name: str) -> str:
    """Replace ``[filewords]`` with the caption and ``[name]`` with the hypernetwork's name."""
    return line.replace("[filewords]", filewords).replace("[name]", name)


def prepare_caption(caption: str, rng: random.Random, *, shuffle: bool = False, drop_out: float = 0.0) -> str:
    """Apply tag drop-out then shuffling (A1111's order) to one raw caption."""
    text = tag_drop_out(caption, drop_out, rng) if drop_out > 0 else caption
    return shuffle_tags(text, rng) if shuffle else text
