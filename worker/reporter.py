"""The reporter: core's read-only training callback that tells the service what the trainer does.

The training thread only records facts in memory (the latest step, checkpoints and grids to
upload), so a slow or unreachable database or object store never slows a step. A flusher thread
writes progress and events at most once per ``flush_interval`` in one lease-checked transaction;
an uploader thread publishes checkpoints and grids under content-hash keys with retries. The
flusher's write returns the job row's status, which is how a cancellation reaches the loop: the
next ``on_step`` asks the trainer to stop. When the database is unreachable nothing is lost:
events stay queued and the next successful flush catches the progress up.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.training.callbacks import (
    Callback,
    CheckpointEvent,
    Control,
    EndEvent,
    ErrorEvent,
    SampleEvent,
    StepEvent,
)
from worker.lease import LeaseLostError
from worker.uploads import ArtifactFile, UploadedArtifact, Uploader

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 1.0
RATE_WINDOW = 20  # steps averaged for samples/s and the ETA


@dataclass(frozen=True)
class PendingEvent:
    """An event to append, and the artifacts recorded with it (in the same transaction)."""

    type: str
    data: dict[str, Any]
    artifacts: tuple[UploadedArtifact, ...] = ()


@dataclass(frozen=True)
class JobState:
    """What a flush read back from the job row."""

    status: str
    cancel_requested: bool
    cancel_save_checkpoint: bool


class ReportSink(Protocol):
    """Where the reporter writes; every call checks the lease and raises ``LeaseLostError``."""

    def flush(self, progress: dict[str, Any] | None, events: list[PendingEvent]) -> JobState:
        """Write progress (when given) and append events with their artifacts, atomically."""
        ...


@dataclass
class StopRequest:
    """Why the reporter wants the loop to stop."""

    reason: str  # "cancelled" | "lease_lost" | "interrupted"
    save: bool


@dataclass
class _Rate:
    """Seconds per step over the last ``RATE_WINDOW`` steps."""

    seconds: deque[float] = field(default_factory=lambda: deque(maxlen=RATE_WINDOW))

    def add(self, s: float) -> None:
        self.seconds.append(s)

    def per_step(self) -> float | None:
        return sum(self.seconds) / len(self.seconds) if self.seconds else None


class Reporter(Callback):
    """Progress, checkpoints, grids and cancellation between core's trainer and the job row."""

    def __init__(
        self,
        sink: ReportSink,
        uploader: Uploader,
        *,
        total_steps: int,
        samples_per_step: int,
        flush_interval: float = FLUSH_INTERVAL_S,
        upload_optimizer_state: bool = True,
        save_resume_state: Callable[[CheckpointEvent], bool] | None = None,
    ) -> None:
        self.sink = sink
        self.uploader = uploader
        self.total_steps = total_steps
        self.samples_per_step = samples_per_step
        self.flush_interval = flush_interval
        self.upload_optimizer_state = upload_optimizer_state
        self.save_resume_state = save_resume_state
        self._lock = threading.Lock()
        self._latest: StepEvent | None = None
        self._flushed_step: int | None = None
        self._rate = _Rate()
        self._events: deque[PendingEvent] = deque()
        self._stop_request: StopRequest | None = None
        self._stop_delivered = False
        self._closed = threading.Event()
        self.last_checkpoint_step: int | None = None
        self.lease_lost = False
        self.state: JobState | None = None
        self._thread = threading.Thread(target=self._flush_loop, name="reporter-flush", daemon=True)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> Reporter:
        """Start the flusher thread."""
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Stop the flusher after one last flush attempt."""
        self._closed.set()
        self._thread.join(timeout=timeout)

    # -- the training thread's side (memory only) --------------------------------------------------
    def on_step(self, event: StepEvent, control: Control) -> None:
        """Record the step; deliver a pending stop request to the loop."""
        with self._lock:
            self._latest = event
            self._rate.add(event.seconds)
            request = self._stop_request
        if request is not None and not self._stop_delivered:
            self._stop_delivered = True
            control.request_stop(request.reason)

    def on_checkpoint(self, event: CheckpointEvent, control: Control) -> None:
        """Queue the checkpoint for upload (unless the loop is stopping without keeping it)."""
        request = self._stop_request
        if request is not None and self._stop_delivered and not request.save:
            return  # the stop's own checkpoint, for a cancel that did not ask for one (or a lost lease)
        self.uploader.submit(lambda: self._upload_checkpoint(event))

    def on_sample(self, event: SampleEvent, control: Control) -> None:
        """Queue a preview grid for upload."""
        kind = "sample_grid" if event.step is not None else "comparison_grid"
        self.uploader.submit(lambda: self._upload_sample(ArtifactFile(event.path, kind, event.step)))

    def on_end(self, event: EndEvent) -> None:
        """Nothing to do: the runner finalises under the lease."""

    def on_error(self, event: ErrorEvent) -> None:
        """Nothing to do: the runner records the failure under the lease."""

    # -- the uploader's thread ------------------------------------------------------------------------
    def _upload_checkpoint(self, event: CheckpointEvent) -> None:
        """Resume state first, then ``.optim`` and ``.pt``; the event is recorded only when all arrived."""
        if self.save_resume_state is not None and not self.save_resume_state(event):
            self.emit(
                "job.log", {"level": "warning", "message": f"could not upload the state of step {event.step}"}
            )
            return
        uploaded: list[UploadedArtifact] = []
        if event.optimizer_path is not None and self.upload_optimizer_state:
            optim = self.uploader.upload(ArtifactFile(event.optimizer_path, "optimizer_state", event.step))
            if optim is not None:
                uploaded.append(optim)
        pt = self.uploader.upload(ArtifactFile(event.path, "checkpoint", event.step))
        if pt is None:
            self.emit(
                "job.log", {"level": "warning", "message": f"could not upload checkpoint {event.path.name}"}
            )
            return
        self.last_checkpoint_step = event.step
        data = {"step": event.step, "name": pt.name, "sha256": pt.sha256}
        self.emit("job.checkpoint", data, pt, *uploaded)

    def _upload_sample(self, item: ArtifactFile) -> None:
        result = self.uploader.upload(item)
        if result is None:
            self.emit("job.log", {"level": "warning", "message": f"could not upload {item.path.name}"})
            return
        self.emit("job.sample", {"step": item.step, "name": result.name, "kind": item.kind}, result)

    def emit(self, type_: str, data: dict[str, Any], *artifacts: UploadedArtifact) -> None:
        """Queue an event (``type_`` empty: only the artifacts) for the next flush."""
        with self._lock:
            self._events.append(PendingEvent(type_, data, tuple(artifacts)))

    # -- the flusher thread ----------------------------------------------------------------------------
    def progress(self) -> dict[str, Any] | None:
        """The progress fields of the latest step (None before the first step)."""
        with self._lock:
            latest, per_step = self._latest, self._rate.per_step()
        if latest is None:
            return None
        sps = self.samples_per_step / per_step if per_step else None
        remaining = max(0, latest.end_step - latest.step)
        return {
            "step": latest.step,
            "total_steps": latest.end_step,
            "loss": latest.loss,
            "learn_rate": latest.learn_rate,
            "samples_per_second": round(sps, 4) if sps else None,
            "eta_seconds": round(remaining * per_step, 1) if per_step else None,
        }

    def request_stop(self, reason: str, save: bool) -> None:
        """Ask the loop to stop at its next step (cancellation, lost lease)."""
        with self._lock:
            if self._stop_request is None:
                self._stop_request = StopRequest(reason, save)

    @property
    def stop_request(self) -> StopRequest | None:
        """The stop the reporter asked for, if any."""
        return self._stop_request

    def flush(self) -> bool:
        """One flush: progress (if it moved) plus queued events; False when the database failed."""
        progress = self.progress()
        with self._lock:
            events = list(self._events)
            self._events.clear()
        moved = progress is not None and progress["step"] != self._flushed_step
        to_write = list(events)
        if moved:
            assert progress is not None
            to_write.append(PendingEvent("job.progress", progress))
        # Even with nothing new, the write renews the lease and reads the row back (cancellation).
        try:
            state = self.sink.flush(progress if moved else None, to_write)
        except LeaseLostError:
            self.lease_lost = True
            self.request_stop("lease_lost", save=False)
            return False
        except Exception as exc:  # the database is down: keep everything for the next flush
            log.warning("progress flush failed (%s); will retry", exc)
            with self._lock:
                self._events.extendleft(reversed(events))
            return False
        if moved:
            self._flushed_step = progress["step"] if progress else None
        self.state = state
        if state.cancel_requested or state.status == "cancelling":
            self.request_stop("cancelled", save=state.cancel_save_checkpoint)
        return True

    def _flush_loop(self) -> None:
        while not self._closed.wait(self.flush_interval):
            if self.lease_lost:
                return
            self.flush()

    def take_pending(self) -> list[PendingEvent]:
        """Remove and return the events not written yet (the runner writes them when it finalises)."""
        with self._lock:
            events = list(self._events)
            self._events.clear()
        return events

    def pending_events(self) -> int:
        """Events not written yet."""
        with self._lock:
            return len(self._events)
