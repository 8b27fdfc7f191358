"""The A1111 learn-rate schedule parser and its resume semantics."""

from __future__ import annotations

import pytest

from core.errors import InvalidOptionError
from core.training.schedule import Schedule, Segment, parse_segments

A1111_EXAMPLE = "5e-5:100, 5e-6:1500, 5e-7:10000, 5e-8:20000"


@pytest.mark.parametrize(
    ("text", "max_steps", "step", "expected"),
    [
        # A1111's own example: each pair's rate holds until its step.
        (A1111_EXAMPLE, 20000, 0, 5e-5),
        (A1111_EXAMPLE, 20000, 99, 5e-5),
        (A1111_EXAMPLE, 20000, 100, 5e-6),
        (A1111_EXAMPLE, 20000, 1499, 5e-6),
        (A1111_EXAMPLE, 20000, 1500, 5e-7),
        (A1111_EXAMPLE, 20000, 9999, 5e-7),
        (A1111_EXAMPLE, 20000, 10000, 5e-8),
        (A1111_EXAMPLE, 20000, 19999, 5e-8),
        (A1111_EXAMPLE, 20000, 20000, None),
        # a resumed run at step 5000 skips the passed pairs
        (A1111_EXAMPLE, 20000, 5000, 5e-7),
        # the list ends before max steps: the run stops there
        ("1e-5:1000", 5000, 999, 1e-5),
        ("1e-5:1000", 5000, 1000, None),
        # a bare rate and rate:-1 run to the end
        ("1e-5:10, 1e-6", 50, 49, 1e-6),
        ("1e-5:10, 1e-6:-1", 50, 49, 1e-6),
        ("1e-6:-1", 50, 50, None),
        # max steps cuts a longer schedule
        ("1e-5:1000", 300, 299, 1e-5),
        ("1e-5:1000", 300, 300, None),
        # a single number, spaces and a trailing comma
        ("5e-6", 10, 0, 5e-6),
        (" 5e-6 : 3 ,2e-6:6, ", 10, 3, 2e-6),
        (0.001, 10, 9, 0.001),
        (1, 10, 0, 1.0),
    ],
)
def test_value_at(text: str | float, max_steps: int, step: int, expected: float | None) -> None:
    assert Schedule.parse(text, max_steps).value_at(step) == expected


@pytest.mark.parametrize(
    ("text", "max_steps", "end"),
    [("1e-5:1000", 5000, 1000), (A1111_EXAMPLE, 30000, 20000), (A1111_EXAMPLE, 700, 700), ("1e-5", 42, 42)],
)
def test_end_step(text: str, max_steps: int, end: int) -> None:
    assert Schedule.parse(text, max_steps).end_step == end


def test_segments_and_max_value() -> None:
    assert parse_segments("1e-4:10, 1e-5") == (Segment(1e-4, 10), Segment(1e-5, None))
    assert Schedule.parse("1e-3:10, 1e-5", 100).max_value == 1e-3
    # a segment the run never reaches does not count
    assert Schedule.parse("1e-5:10, 1e-3", 10).max_value == 1e-5


def test_clip_value_holds_its_last_value() -> None:
    clip = Schedule.parse("0.5:10, 0.1:20", 100, option="clip_grad_value")
    assert clip.clip_value_at(0) == 0.5
    assert clip.clip_value_at(15) == 0.1
    assert clip.clip_value_at(50) == 0.1


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        (" , ", "empty"),
        ("abc", "not a number"),
        ("1e-5:abc", "not an integer"),
        ("1e-5:10.5", "not an integer"),
        ("1e-5:0", "positive"),
        ("1e-5:-2", "positive"),
        ("-1e-5", ">= 0"),
        ("nan", "finite"),
        ("inf:10", "finite"),
        ("1e-5:10:20", "more than one"),
        ("1e-5:100, 1e-6:50", "must increase"),
        ("1e-5:100, 1e-6:100", "must increase"),
        ("1e-5, 1e-6:100", "runs to the end"),
        ("1e-5:-1, 1e-6", "runs to the end"),
    ],
)
def test_bad_schedules_are_refused(text: str, fragment: str) -> None:
    with pytest.raises(InvalidOptionError) as info:
        Schedule.parse(text, 100, option="clip_grad_value")
    assert info.value.option == "clip_grad_value"
    assert fragment in str(info.value)


def test_bad_arguments() -> None:
    with pytest.raises(InvalidOptionError):
        Schedule.parse("1e-5", 0)
    with pytest.raises(InvalidOptionError):
        Schedule.parse(True, 10)  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError):
        Schedule.parse("1e-5", 10).value_at(-1)
