"""A1111's learn-rate schedule syntax ``"lr:step, lr:step, ..., lr"``; torch-free.

Semantics (a1111-hypernetwork-format.md, section 5): each ``rate:step`` pair means
"use rate until the optimizer has done ``step`` steps"; a bare rate or ``rate:-1``
runs to the end; pairs whose step has already passed are skipped (that is how a
resumed run finds its place); when the list ends before the run's ``max_steps``,
training stops there. A single number is accepted too. The same syntax gives the
gradient-clipping value, which keeps its last value instead of stopping.

Unlike A1111, which silently ignores them, we refuse strings whose steps do not
increase or that continue after a run-to-the-end rate: those are always typos.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.errors import InvalidOptionError

_HELP = 'expected "rate" or "rate:step, rate:step, ..., rate" (for example "5e-5:100, 5e-6:1500, 5e-7")'


@dataclass(frozen=True)
class Segment:
    """Use ``value`` while fewer than ``until`` steps are done (``None``: to the end)."""

    value: float
    until: int | None


def _parse_rate(text: str, option: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidOptionError(f"{text!r} is not a number; {_HELP}", option=option) from None
    if not math.isfinite(value) or value < 0:
        raise InvalidOptionError(f"{text!r} must be a finite number >= 0", option=option)
    return value


def _parse_step(text: str, option: str) -> int:
    try:
        step = int(text)
    except ValueError:
        raise InvalidOptionError(f"step {text!r} is not an integer; {_HELP}", option=option) from None
    if step == -1:
        return step
    if step <= 0:
        raise InvalidOptionError(
            f"step {step} must be a positive integer (or -1 for 'to the end')", option=option
        )
    return step


def parse_segments(schedule: str | float | int, option: str = "learn_rate") -> tuple[Segment, ...]:
    """Parse a schedule string (or a single number) into its segments; raise on bad syntax."""
    if isinstance(schedule, bool):
        raise InvalidOptionError(f"expected a number or a schedule string, not {schedule!r}", option=option)
    if isinstance(schedule, int | float):
        return (Segment(_parse_rate(repr(float(schedule)), option), None),)
    segments: list[Segment] = []
    for part in schedule.split(","):
        part = part.strip()
        if not part:
            continue  # A1111 tolerates empty entries such as a trailing comma
        if segments and segments[-1].until is None:
            raise InvalidOptionError(f"{part!r} follows a rate that already runs to the end", option=option)
        pieces = part.split(":")
        if len(pieces) > 2:
            raise InvalidOptionError(f"{part!r} has more than one ':'; {_HELP}", option=option)
        rate = _parse_rate(pieces[0].strip(), option)
        step = _parse_step(pieces[1].strip(), option) if len(pieces) == 2 else -1
        until = None if step == -1 else step
        if until is not None and segments:
            previous = segments[-1].until
            assert previous is not None  # guarded above: only the last segment may run to the end
            if until <= previous:
                raise InvalidOptionError(
                    f"steps must increase, but {until} follows {previous}", option=option
                )
        segments.append(Segment(rate, until))
    if not segments:
        raise InvalidOptionError(f"the schedule is empty; {_HELP}", option=option)
    return tuple(segments)


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule bound to the run's ``max_steps``."""

    segments: tuple[Segment, ...]
    max_steps: int

    @classmethod
    def parse(cls, schedule: str | float | int, max_steps: int, option: str = "learn_rate") -> Schedule:
        """Parse ``schedule`` for a run of at most ``max_steps`` optimizer steps."""
        if max_steps <= 0:
            raise InvalidOptionError(f"max_steps must be positive, got {max_steps}", option="steps")
        return cls(parse_segments(schedule, option), max_steps)

    @property
    def end_step(self) -> int:
        """Number of optimizer steps the run does: ``max_steps`` or where the list ends, if earlier."""
        last = self.segments[-1].until
        return self.max_steps if last is None else min(last, self.max_steps)

    @property
    def max_value(self) -> float:
        """The largest value any step of the run uses."""
        used: list[float] = []
        start = 0
        for segment in self.segments:
            if start >= self.end_step:
                break
            used.append(segment.value)
            start = self.end_step if segment.until is None else segment.until
        return max(used)

    def value_at(self, step: int) -> float | None:
        """Value for the optimizer step taken when ``step`` steps are done; ``None`` once the run is over."""
        if step < 0:
            raise InvalidOptionError(f"step must be >= 0, got {step}", option="step")
        if step >= self.end_step:
            return None
        for segment in self.segments:  # skips the pairs already passed, as A1111's resume does
            if segment.until is None or step < segment.until:
                return segment.value
        return None  # unreachable: end_step bounds the last segment

    def clip_value_at(self, step: int) -> float:
        """Clip value at ``step``: like ``value_at`` but the last value holds once the list ends."""
        for segment in self.segments:
            if segment.until is None or step < segment.until:
                return segment.value
        return self.segments[-1].value


def validate_schedule(schedule: str | float | int, option: str = "learn_rate") -> None:
    """Raise ``InvalidOptionError`` naming ``option`` when ``schedule`` is not valid syntax."""
    parse_segments(schedule, option)
