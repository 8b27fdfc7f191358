"""Caption rules, token estimates, tag shuffling/drop-out and prompt templates."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from core.data.captions import (
    caption_from_filename,
    estimate_tokens,
    prepare_caption,
    read_caption_bytes,
    shuffle_tags,
    split_tags,
    tag_drop_out,
)
from core.data.templates import (
    BUILTIN_TEMPLATES,
    builtin_template,
    resolve_template,
    template_from_file,
    template_from_text,
)
from core.errors import InvalidOptionError


@pytest.mark.parametrize(
    ("filename", "caption"),
    [
        ("00001-0-a cat.png", "a cat"),  # A1111 preprocess output names
        ("00012 sunset over sea.jpg", "sunset over sea"),
        ("2girls.png", "girls"),  # A1111's rule eats any leading digits
        ("00012 - sunset.png", "- sunset"),  # ...but only digits/dashes, then spaces
        ("12_cat.png", "_cat"),
        ("a.b.c.webp", "a.b.c"),
        ("dir/sub/0-portrait.png", "portrait"),
        ("  spaced   name .jpg", "spaced name"),
        ("123.png", ""),
        ("0012-水墨画.png", "水墨画"),
        ("noext", "noext"),
    ],
)
def test_caption_from_filename_follows_a1111(filename: str, caption: str) -> None:
    assert caption_from_filename(filename) == caption


@pytest.mark.parametrize(
    ("raw", "caption", "clean"),
    [
        (b"\xef\xbb\xbfa cat,\r\n sitting\t ", "a cat, sitting", True),
        ("一只猫，坐着\n".encode(), "一只猫，坐着", True),
        (b"", "", True),
        (b"caf\xe9", "caf\ufffd", False),
    ],
)
def test_read_caption_bytes(raw: bytes, caption: str, clean: bool) -> None:
    assert read_caption_bytes(raw) == (caption, clean)


def test_estimate_tokens_counts_words_and_punctuation() -> None:
    assert estimate_tokens("a red, circle!") == 5
    assert estimate_tokens("anything", count_tokens=lambda s: 42) == 42
    assert estimate_tokens("") == 0


def test_shuffle_tags_is_a_seeded_permutation() -> None:
    caption = "a, b, c, d, e, f, g, h"
    first = shuffle_tags(caption, random.Random(7))
    assert first == shuffle_tags(caption, random.Random(7))
    assert sorted(split_tags(first)) == split_tags(caption)
    outcomes = {shuffle_tags(caption, random.Random(s)) for s in range(20)}
    assert len(outcomes) > 10


def test_tag_drop_out_probability_and_determinism() -> None:
    caption = ", ".join(f"t{i}" for i in range(2000))
    kept = split_tags(tag_drop_out(caption, 0.3, random.Random(1)))
    assert 0.65 < len(kept) / 2000 < 0.75
    assert kept == split_tags(tag_drop_out(caption, 0.3, random.Random(1)))
    assert tag_drop_out("a, b", 0.0, random.Random(0)) == "a, b"
    assert tag_drop_out("a, b", 1.0, random.Random(0)) == ""
    with pytest.raises(InvalidOptionError):
        tag_drop_out("a", 1.5, random.Random(0))


def test_prepare_caption_without_options_is_identity() -> None:
    assert prepare_caption("a,  b ,c", random.Random(0)) == "a,  b ,c"


def test_builtin_templates_load_and_use_placeholders() -> None:
    for name in BUILTIN_TEMPLATES:
        t = builtin_template(name)
        assert t.lines and t.name == name
        for line in t.lines:
            assert "[filewords]" in line or "[name]" in line
        if name.endswith("_filewords") or name in ("hypernetwork", "none"):
            assert all("[filewords]" in line for line in t.lines)
        if name in ("style", "subject"):
            assert not t.uses_filewords
    assert builtin_template("none").lines == ("[filewords]",)
    # Written in our own words: none of A1111's well-known lines.
    assert "a painting, art by [name]" not in builtin_template("style").lines
    assert "a photo of a [name]" not in builtin_template("subject").lines


def test_template_render_is_seeded_and_fills_placeholders() -> None:
    t = template_from_text("a [filewords] by [name]\n\n  [name]: [filewords]  \n")
    assert t.lines == ("a [filewords] by [name]", "[name]: [filewords]")
    prompts = [t.render("x, y, z", "inkwash", random.Random(s), shuffle_tags=True) for s in range(10)]
    assert prompts == [t.render("x, y, z", "inkwash", random.Random(s), shuffle_tags=True) for s in range(10)]
    assert all("inkwash" in p and "[" not in p for p in prompts)
    assert len({p.split(" by ")[0] if " by " in p else "other" for p in prompts}) > 1


def test_resolve_template_and_errors(tmp_path: Path) -> None:
    assert resolve_template("style").name == "style"
    assert resolve_template("[filewords], in ink").lines == ("[filewords], in ink",)
    f = tmp_path / "mine.txt"
    f.write_text("one [name]\ntwo [filewords]\n", encoding="utf-8")
    assert template_from_file(f).lines == ("one [name]", "two [filewords]")
    for bad in ("no_such_template", ""):
        with pytest.raises(InvalidOptionError) as info:
            resolve_template(bad)
        assert info.value.option == "template"
    with pytest.raises(InvalidOptionError):
        template_from_text("\n \n")
    with pytest.raises(InvalidOptionError):
        builtin_template("../../etc/passwd")
