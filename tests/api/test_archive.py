"""Member names are judged as strings: what is accepted, what is junk, what is rejected and why."""

from __future__ import annotations

import pytest

from api.archive import JunkMemberError, MemberRejectedError, judge_name, looks_like_archive
from tests.api.factories import make_zip, png


@pytest.mark.parametrize(
    ("raw", "parts"),
    [
        ("cat.png", ("cat.png",)),
        ("a/b/cat.png", ("a", "b", "cat.png")),
        ("a\\b\\cat.png", ("a", "b", "cat.png")),
        ("./a//cat.png", ("a", "cat.png")),
        ("水墨/山水画.png", ("水墨", "山水画.png")),
        ("cafe\u0301.png", ("café.png",)),  # NFC: one code point, whatever the zip tool wrote
    ],
)
def test_accepted_names(raw: str, parts: tuple[str, ...]) -> None:
    assert judge_name(raw, max_depth=4) == parts


@pytest.mark.parametrize(
    "raw", ["__MACOSX/._cat.png", "a/.DS_Store", "._cat.png", ".git/config", "Thumbs.db", "x/desktop.ini"]
)
def test_junk_names(raw: str) -> None:
    with pytest.raises(JunkMemberError):
        judge_name(raw, max_depth=4)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("../x.png", "unsafe_path"),
        ("a/../../x.png", "unsafe_path"),
        ("/abs.png", "unsafe_path"),
        ("\\\\server\\share\\x.png", "unsafe_path"),
        ("C:/x.png", "unsafe_path"),
        ("d:x.png", "unsafe_path"),
        ("a\x00b.png", "invalid_name"),
        ("a\nb.png", "invalid_name"),
        ("", "invalid_name"),
        ("./", "invalid_name"),
        ("a/b/c/d/e/f.png", "path_too_deep"),
        ("x" * 300 + ".png", "invalid_name"),
    ],
)
def test_rejected_names(raw: str, code: str) -> None:
    with pytest.raises(MemberRejectedError) as info:
        judge_name(raw, max_depth=4)
    assert info.value.code == code


def test_archive_signatures_are_recognised() -> None:
    assert looks_like_archive(make_zip([("a.png", png())])[:512])
    assert looks_like_archive(b"\x1f\x8b\x08\x00")
    assert looks_like_archive(b"\x00" * 257 + b"ustar\x0000")
    assert not looks_like_archive(png()[:512])
