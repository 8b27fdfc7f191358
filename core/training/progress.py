"""A tqdm progress bar as a training callback (step, loss, learning rate, it/s, ETA)."""

from __future__ import annotations

from tqdm import tqdm

from core.training.callbacks import (
    Callback,
    CheckpointEvent,
    Control,
    EndEvent,
    ErrorEvent,
    SampleEvent,
    StepEvent,
)


class ProgressBar(Callback):
    """Shows progress; when ``interrupted`` is set (Ctrl-C) it asks the loop to save and stop."""

    def __init__(self) -> None:
        self.bar: tqdm[None] | None = None
        self.interrupted = False

    def on_step(self, event: StepEvent, control: Control) -> None:
        """Advance the bar to ``event.step``."""
        if self.bar is None:
            # tqdm measures it/s and the ETA from the steps this session does.
            self.bar = tqdm(total=event.end_step, initial=event.step - 1, unit="step", dynamic_ncols=True)
        self.bar.total = event.end_step
        self.bar.set_postfix(loss=f"{event.loss:.4f}", lr=f"{event.learn_rate:.2e}", refresh=False)
        self.bar.update(event.step - self.bar.n)
        if self.interrupted:
            control.request_stop("interrupted")

    def _write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text)

    def on_checkpoint(self, event: CheckpointEvent, control: Control) -> None:
        """Mention the checkpoint."""
        self._write(f"saved {event.path}")

    def on_sample(self, event: SampleEvent, control: Control) -> None:
        """Mention the grid."""
        self._write(f"wrote {event.path}")

    def on_end(self, event: EndEvent) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()

    def on_error(self, event: ErrorEvent) -> None:
        """Close the bar so the error message is readable."""
        if self.bar is not None:
            self.bar.close()
