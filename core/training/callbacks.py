"""Read-only training callbacks: they observe events and may only ask the loop to stop or save.

The loop hands each callback frozen event records and one ``Control``; nothing else of the
trainer is reachable from a callback, so progress bars, the worker's reporter and cancellation
cannot change what is trained (style.md, habit 6).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Control:
    """The only channel back into the loop: request a stop (with a reason) or a checkpoint."""

    stop_requested: bool = False
    stop_reason: str | None = None
    save_requested: bool = False

    def request_stop(self, reason: str = "stopped by a callback") -> None:
        """Ask the loop to save a checkpoint and end after the current step."""
        self.stop_requested = True
        self.stop_reason = self.stop_reason or reason

    def request_save(self) -> None:
        """Ask the loop to write a checkpoint after the current step."""
        self.save_requested = True


@dataclass(frozen=True)
class StepEvent:
    """One optimizer step finished; ``step`` counts optimizer steps done (1-based here)."""

    step: int
    end_step: int  # the step the run ends at (the schedule may end before ``steps``)
    epoch: int
    epoch_step: int
    loss: float  # mean over the step's micro-batches
    learn_rate: float
    seconds: float  # wall time of this step


@dataclass(frozen=True)
class CheckpointEvent:
    """A checkpoint was written; ``path`` is ``hypernetworks/<name>-<step>.pt``."""

    step: int
    path: Path
    optimizer_path: Path | None
    sha256: str


@dataclass(frozen=True)
class SampleEvent:
    """A preview grid was written (``step`` is None for the final comparison grid)."""

    step: int | None
    path: Path


@dataclass(frozen=True)
class EndEvent:
    """The run ended normally (finished or stopped on request); ``final_path`` is ``<name>.pt``."""

    step: int
    stopped: bool
    reason: str | None
    final_path: Path | None
    run_dir: Path


@dataclass(frozen=True)
class ErrorEvent:
    """The run failed; the exception is re-raised after the callbacks ran."""

    step: int
    error: BaseException


class Callback:
    """Base class with no-op hooks; subclasses override the events they care about."""

    def on_step(self, event: StepEvent, control: Control) -> None:
        """Called after every optimizer step."""

    def on_checkpoint(self, event: CheckpointEvent, control: Control) -> None:
        """Called after a checkpoint was written."""

    def on_sample(self, event: SampleEvent, control: Control) -> None:
        """Called after a preview grid was written."""

    def on_end(self, event: EndEvent) -> None:
        """Called once when the run ends normally."""

    def on_error(self, event: ErrorEvent) -> None:
        """Called once when the run fails, before the error propagates."""


@dataclass
class CallbackList:
    """Fans every event out to several callbacks, in order, sharing one ``Control``."""

    callbacks: Sequence[Callback] = ()
    control: Control = field(default_factory=Control)

    def step(self, event: StepEvent) -> None:
        """Deliver a step event."""
        for cb in self.callbacks:
            cb.on_step(event, self.control)

    def checkpoint(self, event: CheckpointEvent) -> None:
        """Deliver a checkpoint event."""
        for cb in self.callbacks:
            cb.on_checkpoint(event, self.control)

    def sample(self, event: SampleEvent) -> None:
        """Deliver a sample event."""
        for cb in self.callbacks:
            cb.on_sample(event, self.control)

    def end(self, event: EndEvent) -> None:
        """Deliver the end event."""
        for cb in self.callbacks:
            cb.on_end(event)

    def error(self, event: ErrorEvent) -> None:
        """Deliver the error event."""
        for cb in self.callbacks:
            cb.on_error(event)
