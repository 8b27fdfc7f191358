"""Runs one delivery of a job: claim, fetch, train with the reporter, finalise under the lease.

The task hands a job id here. Everything the run does is fenced by the lease it claimed
(``attempt`` is the fencing token): if the lease is lost, the run stops and writes nothing more;
the reconciler re-queues the job and the next run resumes from the latest uploaded checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from api.db.engine import Database
from api.db.enums import JobStatus
from api.db.models import Artifact
from api.db.repositories.artifacts import ArtifactRepository
from api.db.repositories.base_models import BaseModelRepository
from api.db.repositories.datasets import DatasetRepository
from api.db.repositories.jobs import JobRepository
from api.services.events import append_event
from api.settings import Settings, get_settings
from api.storage import ObjectStore, build_store, tenant_key
from api.storage.s3 import S3ObjectStore
from core.errors import HyperforgeError
from core.spec import TrainingSpec, parse_spec
from core.training.callbacks import Callback, CheckpointEvent, Control, EndEvent, StepEvent
from core.training.checkpointing import CHECKPOINT_DIR, STATE_SUFFIX
from core.training.run import CONFIG_NAME
from worker.cache import DiskCache
from worker.lease import JobLease, LeaseKeeper, LeaseLostError, worker_identity
from worker.reconciler import MAX_ATTEMPTS_CODE
from worker.reporter import JobState, PendingEvent, Reporter
from worker.uploads import ArtifactFile, UploadedArtifact, Uploader

log = logging.getLogger(__name__)

T = TypeVar("T")

FINALISE_PATIENCE_S = 600.0  # how long a finished run keeps trying to reach the database
UPLOAD_DRAIN_S = 300.0
INTERNAL_ERROR = "internal_error"
INTERRUPTED = "interrupted"
MODEL_NOT_FOUND = "model_not_found"
MODEL_FETCH_FAILED = "model_fetch_failed"
MODEL_HASH_MISMATCH = "model_hash_mismatch"


@dataclass(frozen=True)
class JobFacts:
    """What the run needs from the job row, read once at claim time."""

    job_id: str
    tenant_id: str
    name: str
    spec: dict[str, Any]
    resolved_spec: dict[str, Any] | None
    dataset_id: str
    base_model_id: str
    attempt: int
    cancel_requested: bool
    cancel_save_checkpoint: bool


@dataclass(frozen=True)
class ResumeSource:
    """The latest checkpoint a re-run resumes from (artifact rows of one step)."""

    step: int
    checkpoint: Artifact
    optimizer: Artifact | None


def db_url_for_worker(url: str) -> str:
    """Add a connect timeout to Postgres URLs so an unreachable database fails fast instead of hanging."""
    if url.startswith("postgresql") and "connect_timeout" not in url:
        return url + ("&" if "?" in url else "?") + "connect_timeout=5"
    return url


def state_key(tenant_id: str, job_id: str, step: int, suffix: str) -> str:
    """Storage key of the worker's resume state of a checkpoint step (not a client artifact)."""
    return tenant_key(tenant_id, "jobs", job_id, "resume", f"step-{step}{suffix}")


def retry_db(action: Callable[[], T], *, patience: float, what: str) -> T:
    """Run a database action until it succeeds or ``patience`` seconds passed; lease loss is final."""
    deadline = time.monotonic() + patience
    delay = 0.5
    while True:
        try:
            return action()
        except LeaseLostError:
            raise
        except Exception as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s failed (%s); retrying in %.1f s", what, exc, delay)
            time.sleep(delay)  # backing off while the database is unreachable
            delay = min(delay * 2, 15.0)


class LeasedWriter:
    """The reporter's sink: every write renews and checks the lease in the same transaction."""

    def __init__(self, db: Database, lease: JobLease, tenant_id: str) -> None:
        self.db = db
        self.lease = lease
        self.tenant_id = tenant_id
        self._pending: dict[str, Any] = {}
        self._pending_lock = threading.Lock()

    def set_later(self, **values: Any) -> None:
        """Queue job columns (``resolved_spec`` ...) for the next lease-checked write; never blocks."""
        with self._pending_lock:
            self._pending.update(values)

    def _take_pending(self) -> dict[str, Any]:
        with self._pending_lock:
            values, self._pending = self._pending, {}
        return values

    def _restore_pending(self, values: dict[str, Any]) -> None:
        # A failed transaction wrote nothing: keep the values for the next try (newer ones win).
        with self._pending_lock:
            self._pending = {**values, **self._pending}

    def record(self, session: Any, events: list[PendingEvent]) -> None:
        artifacts = ArtifactRepository(session)
        for event in events:
            for a in event.artifacts:
                artifacts.add_if_absent(
                    job_id=self.lease.job_id,
                    tenant_id=self.tenant_id,
                    kind=a.kind,
                    name=a.name,
                    step=a.step,
                    bytes=a.bytes,
                    sha256=a.sha256,
                    content_type=a.content_type,
                    storage_key=a.storage_key,
                )
            if event.type:
                append_event(
                    session,
                    job_id=self.lease.job_id,
                    tenant_id=self.tenant_id,
                    type=event.type,
                    data=event.data,
                )

    def flush(self, progress: dict[str, Any] | None, events: list[PendingEvent]) -> JobState:
        """Renew the lease, write progress and append events with their artifacts; one transaction."""
        lease = self.lease
        values = self._take_pending()
        if progress is not None:
            values["progress"] = progress
        try:
            with self.db.session() as session:
                jobs = JobRepository(session)
                held = jobs.renew_lease(lease.job_id, lease.attempt, lease.owner, lease.lease_seconds)
                if held is None:
                    session.rollback()
                    raise LeaseLostError(f"lease of {lease.job_id} attempt {lease.attempt} is gone")
                if values:
                    jobs.update_leased(lease.job_id, lease.attempt, lease.owner, **values)
                self.record(session, events)
                session.commit()
        except Exception:
            values.pop("progress", None)
            self._restore_pending(values)
            raise
        # A cancel sets ``cancel_requested`` with ``cancelling``; the renewal read it back already.
        status = JobStatus.CANCELLING.value if held.cancel_requested else JobStatus.RUNNING.value
        return JobState(status, held.cancel_requested, held.cancel_save_checkpoint)

    def finish(
        self,
        status: str,
        event_type: str,
        data: dict[str, Any],
        *,
        progress: dict[str, Any] | None = None,
        events: list[PendingEvent] | None = None,
        error: tuple[str, str] | None = None,
    ) -> None:
        """Move the job to a final status with its last events and artifacts, only under the lease."""
        values = self._take_pending()
        if progress is not None:
            values["progress"] = progress
        try:
            self._finish(status, event_type, data, values, events, error)
        except Exception:
            values.pop("progress", None)
            self._restore_pending(values)
            raise

    def _finish(
        self,
        status: str,
        event_type: str,
        data: dict[str, Any],
        values: dict[str, Any],
        events: list[PendingEvent] | None,
        error: tuple[str, str] | None,
    ) -> None:
        lease = self.lease
        with self.db.session() as session:
            jobs = JobRepository(session)
            if values and not jobs.update_leased(lease.job_id, lease.attempt, lease.owner, **values):
                session.rollback()
                raise LeaseLostError(f"lease of {lease.job_id} attempt {lease.attempt} is gone")
            self.record(session, events or [])
            done = jobs.finish(
                lease.job_id,
                lease.attempt,
                lease.owner,
                status,
                error_code=error[0] if error else None,
                error_message=error[1] if error else None,
            )
            if not done:
                session.rollback()
                raise LeaseLostError(f"lease of {lease.job_id} attempt {lease.attempt} is gone")
            append_event(session, job_id=lease.job_id, tenant_id=self.tenant_id, type=event_type, data=data)
            session.commit()


def claim(
    db: Database, job_id: str, owner: str, settings: Settings
) -> tuple[JobFacts, ResumeSource | None] | None:
    """Claim the job (compare-and-set), record ``job.started``/``job.resumed``; None if not ours to run."""
    with db.session() as session:
        jobs = JobRepository(session)
        attempt = jobs.claim(job_id, owner, settings.lease_seconds)
        if attempt is None:
            session.rollback()
            _fail_exhausted_queued(db, job_id)
            return None
        job = jobs.get(job_id)
        assert job is not None
        resume = latest_checkpoint(session, job_id) if attempt > 1 else None
        data: dict[str, Any] = {"status": "running", "attempt": attempt}
        if attempt > 1:
            step = resume.step if resume else None
            jobs.update_leased(job_id, attempt, owner, resumed_from_step=step)
            data["resumed_from_step"] = step
        event = "job.started" if attempt == 1 else "job.resumed"
        append_event(session, job_id=job_id, tenant_id=job.tenant_id, type=event, data=data)
        facts = JobFacts(
            job_id=job.id,
            tenant_id=job.tenant_id,
            name=job.name,
            spec=dict(job.spec),
            resolved_spec=dict(job.resolved_spec) if job.resolved_spec else None,
            dataset_id=job.dataset_id,
            base_model_id=job.base_model_id,
            attempt=attempt,
            cancel_requested=job.cancel_requested,
            cancel_save_checkpoint=job.cancel_save_checkpoint,
        )
        session.commit()
    return facts, resume


def _fail_exhausted_queued(db: Database, job_id: str) -> None:
    """A queued job that used every attempt (so cannot be claimed) fails rather than wait forever."""
    with db.session() as session:
        jobs = JobRepository(session)
        job = jobs.get(job_id)
        if job is None or job.status != JobStatus.QUEUED or job.attempt < job.max_attempts:
            return
        message = f"the job already ran {job.attempt} times (max_attempts={job.max_attempts})"
        changed = jobs.compare_and_set(
            job_id,
            expect_status=[JobStatus.QUEUED.value],
            attempt=job.attempt,
            values={
                "status": JobStatus.FAILED.value,
                "error_code": MAX_ATTEMPTS_CODE,
                "error_message": message,
            },
        )
        if changed:
            error = {"code": MAX_ATTEMPTS_CODE, "message": message}
            append_event(
                session,
                job_id=job_id,
                tenant_id=job.tenant_id,
                type="job.failed",
                data={"status": "failed", "error": error},
            )
        session.commit()


def latest_checkpoint(session: Any, job_id: str) -> ResumeSource | None:
    """The job's highest-step uploaded checkpoint and its optimizer state."""
    artifacts = ArtifactRepository(session)
    checkpoints = [a for a in artifacts.list_for_job(job_id, kind="checkpoint") if a.step is not None]
    if not checkpoints:
        return None
    best = max(checkpoints, key=lambda a: (a.step or 0, a.id))
    optim = [a for a in artifacts.list_for_job(job_id, kind="optimizer_state") if a.step == best.step]
    return ResumeSource(int(best.step or 0), best, optim[-1] if optim else None)


# -- inputs: dataset and base model in the local cache -----------------------------------------------
def _cache_key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def fetch_prefix(store: ObjectStore, prefix: str, into: Path) -> None:
    """Download every object under ``prefix`` into ``into`` (relative names kept)."""
    for key in sorted(store.list_keys(prefix)):
        rel = key[len(prefix) :]
        target = into.joinpath(*[p for p in rel.split("/") if p not in ("", ".", "..")])
        target.parent.mkdir(parents=True, exist_ok=True)
        store.download_to(key, target)


def dataset_path(folder: Path) -> Path:
    """The path core reads: the single archive in the folder, or the folder itself."""
    archives = [p for p in folder.rglob("*.zip") if p.is_file()]
    return archives[0] if len(archives) == 1 else folder


def _s3_client(settings: Settings, bucket: str) -> Any:
    """A boto3 client configured as the object store's (endpoint, path style, retries, timeouts)."""
    secret = settings.s3_secret_access_key
    return S3ObjectStore(
        bucket=bucket,
        region=settings.s3_region,
        endpoint_url=settings.s3_endpoint_url,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=secret.get_secret_value() if secret else None,
        force_path_style=settings.s3_force_path_style,
    ).client


def _fetch_s3_model(uri: str, into: Path, settings: Settings) -> None:
    """``s3://bucket/key`` (one checkpoint file) or ``s3://bucket/prefix/`` (a diffusers folder)."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = uri[5:].partition("/")
    if not bucket or not key.strip("/"):
        raise HyperforgeError(f"{uri}: expected s3://bucket/key or s3://bucket/prefix/", code=MODEL_NOT_FOUND)
    prefix = key.rstrip("/") + "/"
    try:
        client = _s3_client(settings, bucket)
        keys = [
            str(o["Key"])
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])
            if not str(o["Key"]).endswith("/")  # folder placeholders some tools create
        ]
        if not keys:  # a single file
            if key.endswith("/"):
                raise HyperforgeError(f"base model {uri}: nothing under that prefix", code=MODEL_NOT_FOUND)
            _download(client, bucket, key, into / Path(key).name)
            return
        for k in keys:
            parts = [p for p in k[len(prefix) :].split("/") if p not in ("", ".", "..")]
            _download(client, bucket, k, into.joinpath("model", *parts))
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
            raise HyperforgeError(f"base model {uri} not found ({code})", code=MODEL_NOT_FOUND) from exc
        raise HyperforgeError(f"fetching base model {uri} failed: {exc}", code=MODEL_FETCH_FAILED) from exc
    except BotoCoreError as exc:
        raise HyperforgeError(f"fetching base model {uri} failed: {exc}", code=MODEL_FETCH_FAILED) from exc


def _download(client: Any, bucket: str, key: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    client.download_file(bucket, key, str(target))


def fetch_model_uri(uri: str, into: Path, settings: Settings) -> None:
    """Download a remote base model (``s3://bucket/key-or-prefix`` or ``https://...``) into ``into``."""
    if uri.lower().startswith("s3://"):
        _fetch_s3_model(uri, into, settings)
        return
    import httpx

    name = Path(uri.split("?", 1)[0]).name or "model.safetensors"
    try:
        with httpx.stream("GET", uri, follow_redirects=True, timeout=httpx.Timeout(60.0)) as response:
            if response.status_code == 404:
                raise HyperforgeError(f"base model {uri} not found (HTTP 404)", code=MODEL_NOT_FOUND)
            response.raise_for_status()
            with (into / name).open("wb") as out:
                for chunk in response.iter_bytes(1 << 20):
                    out.write(chunk)
    except httpx.HTTPError as exc:
        raise HyperforgeError(f"fetching base model {uri} failed: {exc}", code=MODEL_FETCH_FAILED) from exc


def is_remote_model(uri: str) -> bool:
    """True for base models the worker downloads (S3 or HTTP) rather than reads from its own disk."""
    return uri.lower().startswith(("s3://", "http://", "https://"))


def model_path(folder: Path) -> Path:
    """The downloaded model: its diffusers folder or its single file."""
    if (folder / "model").is_dir():
        return folder / "model"
    files = [p for p in folder.iterdir() if p.name != ".complete"]
    return files[0]


@contextlib.contextmanager
def cached_base_model(
    cache: DiskCache, uri: str, sha256_short: str | None, settings: Settings
) -> Iterator[Path]:
    """Yield the local path of a base model, downloading a remote one into ``cache`` once.

    The cache entry is keyed by the sha256 of the URI and the model's short hash, and is kept from
    eviction until the ``with`` block ends. When the model was registered with its sha256, the
    download is checked against it before it enters the cache.
    """
    if not is_remote_model(uri):
        yield Path(uri.removeprefix("file://"))  # on this machine's disk (local mode, shared volumes)
        return

    def fetch(into: Path) -> None:
        fetch_model_uri(uri, into, settings)
        if sha256_short:
            from core.models.hashing import short_hash

            found = short_hash(model_path(into))
            if not found.startswith(sha256_short.lower()):
                raise HyperforgeError(
                    f"base model {uri} has hash {found}, registered as {sha256_short}",
                    code=MODEL_HASH_MISMATCH,
                )

    key = _cache_key("model", uri, sha256_short or "")
    with cache.use(key, fetch) as folder:
        yield model_path(folder)


class ResolvedSpecRecorder(Callback):
    """Writes core's effective spec (``training_config.json``) into ``job.resolved_spec`` once.

    The API resolves with the architecture's default widths; core resolves from the real model. The
    value goes out with the writer's next lease-checked flush, so the training thread never waits.
    """

    def __init__(self, run_dir: Path, writer: LeasedWriter, base_model_id: str) -> None:
        self.run_dir = run_dir
        self.writer = writer
        self.base_model_id = base_model_id
        self.done = False

    def on_step(self, event: StepEvent, control: Control) -> None:
        """On the first step (the config exists by then), queue the resolved spec for writing."""
        if self.done:
            return
        self.done = True
        try:
            document = json.loads((self.run_dir / CONFIG_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("could not read %s (%s); resolved_spec left as the API wrote it", CONFIG_NAME, exc)
            return
        # Named by id, as the API stores it (core's copy holds whatever the client sent).
        self.writer.set_later(resolved_spec={**document["spec"], "base_model": self.base_model_id})


# -- one run ------------------------------------------------------------------------------------------
FINAL_OUTPUTS = (
    ("loss.csv", "loss_log"),
    ("loss.png", "loss_plot"),
    ("training_config.json", "training_config"),
)


def error_of(exc: BaseException) -> tuple[str, str]:
    """The stable ``(code, message)`` a failure is reported with."""
    if isinstance(exc, HyperforgeError):
        return exc.code, str(exc)
    return INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"


class JobRun:
    """One delivery of one job, from claim to a final state (or to a lost lease)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        store: Callable[[], ObjectStore],
        job_id: str,
        owner: str,
    ) -> None:
        self.settings = settings
        self.db = db
        self._make_store = store
        self._store: ObjectStore | None = None
        self.job_id = job_id
        self.owner = owner
        self.cache = DiskCache(settings.effective_cache_dir, settings.worker_cache_max_bytes)
        self._reporter: Reporter | None = None
        self._interrupted = False

    def interrupt(self) -> None:
        """Stop at the next step with a checkpoint and put the job back in the queue (SIGTERM).

        Celery terminates a running task this way when it loses the broker connection
        (``worker_cancel_long_running_tasks_on_connection_loss``): the run hands the job back
        instead of dying mid-step, and the next run resumes from the checkpoint it just saved.
        """
        self._interrupted = True
        if self._reporter is not None:
            self._reporter.request_stop(INTERRUPTED, save=True)

    def _release(self, writer: LeasedWriter, reporter: Reporter, end: EndEvent) -> str:
        """Hand an interrupted job back: ``running -> queued`` under the lease, then re-enqueue it."""
        lease = writer.lease
        pending = reporter.take_pending()

        def release() -> bool:
            with self.db.session() as session:
                jobs = JobRepository(session)
                writer.record(session, pending)
                done = jobs.compare_and_set(
                    lease.job_id,
                    expect_status=[JobStatus.RUNNING.value],
                    attempt=lease.attempt,
                    owner=lease.owner,
                    values={"status": JobStatus.QUEUED.value, "lease_owner": None, "lease_expires_at": None},
                )
                if done:
                    data = {"status": "queued", "reason": "worker_interrupted", "step": end.step}
                    append_event(
                        session, job_id=lease.job_id, tenant_id=writer.tenant_id, type="job.queued", data=data
                    )
                    session.commit()
                return done

        if not retry_db(release, patience=60, what="handing the job back"):
            # Not running any more (a cancel arrived meanwhile): end it as cancelled.
            self._finish(
                writer, reporter, "cancelled", "job.cancelled", {"status": "cancelled", "step": end.step}
            )
            return "cancelled"
        try:
            from worker.celery_app import app
            from worker.maintenance import publish_run

            publish_run(app, self.job_id)
        except Exception as exc:  # the broker is away: the reconciler re-publishes the queued job
            log.warning("could not re-enqueue %s (%s); the reconciler will", self.job_id, exc)
        return INTERRUPTED

    @property
    def store(self) -> ObjectStore:
        """The object store, built on first use (after the claim, so a skipped delivery costs little)."""
        if self._store is None:
            self._store = self._make_store()
        return self._store

    def run(self) -> str:
        """Claim and run the job; returns skipped, succeeded, cancelled, failed or lease_lost."""
        claimed = retry_db(
            lambda: claim(self.db, self.job_id, self.owner, self.settings),
            patience=60,
            what="claiming the job",
        )
        if claimed is None:
            return "skipped"
        facts, resume = claimed
        lease = JobLease(self.job_id, self.owner, facts.attempt, self.settings.lease_seconds)
        writer = LeasedWriter(self.db, lease, facts.tenant_id)
        uploader = Uploader(self.store, facts.tenant_id, self.job_id)
        spec = parse_spec(facts.spec)
        run_dir = self.settings.data_dir / "runs" / f"{self.job_id}-{facts.attempt}"
        reporter = Reporter(
            writer,
            uploader,
            total_steps=spec.training.steps,
            samples_per_step=spec.training.batch_size * spec.training.gradient_accumulation_steps,
            upload_optimizer_state=spec.checkpoints.save_optimizer_state,
            save_resume_state=lambda event: self._save_resume_state(uploader, facts, run_dir, event),
        )
        keeper = LeaseKeeper(
            self.db,
            lease,
            on_lost=lambda: reporter.request_stop("lease_lost", save=False),
            on_cancel=lambda save: reporter.request_stop("cancelled", save=save),
        )
        if facts.cancel_requested:
            reporter.request_stop("cancelled", save=facts.cancel_save_checkpoint)
        self._reporter = reporter
        if self._interrupted:
            reporter.request_stop(INTERRUPTED, save=True)
        keeper.start()
        try:
            return self._run(facts, resume, spec, run_dir, writer, uploader, reporter, keeper)
        except LeaseLostError as exc:
            log.warning("%s; this run stops without writing", exc)
            return "lease_lost"
        finally:
            reporter.close()
            keeper.stop()
            uploader.close(abort=True)
            shutil.rmtree(run_dir, ignore_errors=True)

    def _run(
        self,
        facts: JobFacts,
        resume: ResumeSource | None,
        spec: TrainingSpec,
        run_dir: Path,
        writer: LeasedWriter,
        uploader: Uploader,
        reporter: Reporter,
        keeper: LeaseKeeper,
    ) -> str:
        if reporter.stop_request is not None and reporter.stop_request.reason == "cancelled":
            # Cancelled between the claim and the start: nothing trained, nothing to save.
            self._finish(writer, reporter, "cancelled", "job.cancelled", {"status": "cancelled"})
            return "cancelled"
        try:
            with ExitStack() as stack:
                data = self._fetch_dataset(stack, facts)
                model = self._fetch_model(stack, facts)
                init_from = self._fetch_init_from(facts, run_dir)
                if resume is not None:
                    self._restore_run_dir(facts, resume, spec, run_dir)
                reporter.start()
                recorder = ResolvedSpecRecorder(run_dir, writer, facts.base_model_id)
                end = self._train(spec, model, data, run_dir, init_from, resume, [reporter, recorder])
        except LeaseLostError:
            raise
        except (KeyboardInterrupt, SystemExit):
            raise  # the process is going away: the lease expires and the job is re-run
        except BaseException as exc:
            if reporter.lease_lost or keeper.lost:
                return "lease_lost"
            code, message = error_of(exc)
            log.error("job %s failed: %s: %s\n%s", self.job_id, code, message, traceback.format_exc())
            reporter.close()
            uploader.drain(UPLOAD_DRAIN_S)
            error = {"code": code, "message": message}
            self._finish(
                writer,
                reporter,
                "failed",
                "job.failed",
                {"status": "failed", "error": error},
                error=(code, message),
            )
            return "failed"
        reporter.close()
        uploader.drain(UPLOAD_DRAIN_S)
        if reporter.lease_lost or keeper.lost:
            return "lease_lost"
        request = reporter.stop_request
        if end.stopped and request is not None and request.reason == INTERRUPTED:
            return self._release(writer, reporter, end)
        if end.stopped and request is not None and request.reason == "cancelled":
            self._finish(
                writer, reporter, "cancelled", "job.cancelled", {"status": "cancelled", "step": end.step}
            )
            return "cancelled"
        finals = self._upload_finals(uploader, run_dir, end, spec)
        progress = reporter.progress()
        done: dict[str, Any] = {"status": "succeeded", "step": end.step, "attempt": facts.attempt}
        self._finish(
            writer, reporter, "succeeded", "job.succeeded", done, artifacts=finals, progress=progress
        )
        return "succeeded"

    # -- inputs -----------------------------------------------------------------------------------------
    def _fetch_dataset(self, stack: ExitStack, facts: JobFacts) -> Path:
        def read() -> tuple[str, str]:
            with self.db.session() as session:
                dataset = DatasetRepository(session).get(facts.dataset_id)
                if dataset is None:
                    raise HyperforgeError(f"dataset {facts.dataset_id} is gone", code="dataset_not_found")
                return dataset.sha256 or _cache_key("dataset", dataset.id), dataset.storage_prefix

        key, prefix = retry_db(read, patience=60, what="reading the dataset")
        prefix = prefix if prefix.endswith("/") else prefix + "/"
        folder = stack.enter_context(self.cache.use(key, lambda into: fetch_prefix(self.store, prefix, into)))
        return dataset_path(folder)

    def _fetch_model(self, stack: ExitStack, facts: JobFacts) -> Path:
        def read() -> tuple[str, str | None]:
            with self.db.session() as session:
                model = BaseModelRepository(session).get(facts.base_model_id)
                if model is None:
                    raise HyperforgeError(
                        f"base model {facts.base_model_id} is gone", code="base_model_not_found"
                    )
                return model.uri, model.sha256_short

        uri, short = retry_db(read, patience=60, what="reading the base model")
        return stack.enter_context(cached_base_model(self.cache, uri, short, self.settings))

    def _fetch_init_from(self, facts: JobFacts, run_dir: Path) -> Path | None:
        artifact_id = facts.spec.get("init_from")
        if not artifact_id:
            return None
        with self.db.session() as session:
            artifact = ArtifactRepository(session).get_for_tenant(facts.tenant_id, str(artifact_id))
            if artifact is None:
                raise HyperforgeError(f"init_from artifact {artifact_id} is gone", code="init_from_not_found")
            key = artifact.storage_key
        target = run_dir / "init" / "init_from.pt"
        target.parent.mkdir(parents=True, exist_ok=True)
        self.store.download_to(key, target)
        return target

    # -- resume state ----------------------------------------------------------------------------------
    def _save_resume_state(
        self, uploader: Uploader, facts: JobFacts, run_dir: Path, event: CheckpointEvent
    ) -> bool:
        """Upload what ``resume_run`` needs besides the checkpoint artifacts (state, config, loss log)."""
        state = Path(str(event.path) + STATE_SUFFIX)
        ok = uploader.put_file(state_key(facts.tenant_id, self.job_id, event.step, ".pt.state"), state)
        config = run_dir / CONFIG_NAME
        ok = ok and uploader.put_file(
            state_key(facts.tenant_id, self.job_id, event.step, ".config.json"), config
        )
        loss = run_dir / "loss.csv"
        if ok and loss.exists():
            # The loop appends to loss.csv while we read it: keep whole lines only.
            snapshot = run_dir / f".loss-{event.step}.csv"
            data = loss.read_bytes()
            snapshot.write_bytes(data[: data.rfind(b"\n") + 1])
            ok = uploader.put_file(state_key(facts.tenant_id, self.job_id, event.step, ".loss.csv"), snapshot)
            snapshot.unlink(missing_ok=True)
        return ok

    def _restore_run_dir(
        self, facts: JobFacts, resume: ResumeSource, spec: TrainingSpec, run_dir: Path
    ) -> None:
        """Lay out ``run_dir`` as ``resume_run`` expects it, from the uploaded checkpoint and state."""
        step = resume.step
        pt = run_dir / CHECKPOINT_DIR / f"{spec.name}-{step}.pt"
        pt.parent.mkdir(parents=True, exist_ok=True)
        self.store.download_to(resume.checkpoint.storage_key, pt)
        if resume.optimizer is not None:
            self.store.download_to(resume.optimizer.storage_key, Path(str(pt) + ".optim"))
        self.store.download_to(
            state_key(facts.tenant_id, self.job_id, step, ".pt.state"), Path(str(pt) + STATE_SUFFIX)
        )
        self.store.download_to(
            state_key(facts.tenant_id, self.job_id, step, ".config.json"), run_dir / CONFIG_NAME
        )
        loss_key = state_key(facts.tenant_id, self.job_id, step, ".loss.csv")
        if self.store.head(loss_key) is not None:
            self.store.download_to(loss_key, run_dir / "loss.csv")

    # -- training and results --------------------------------------------------------------------------
    def _train(
        self,
        spec: TrainingSpec,
        model: Path,
        data: Path,
        run_dir: Path,
        init_from: Path | None,
        resume: ResumeSource | None,
        callbacks: list[Callback],
    ) -> EndEvent:
        from core.training.run import resume_run, start_run

        if resume is not None:
            return resume_run(run_dir, model_path=model, data_path=data, callbacks=callbacks)
        return start_run(spec, model, data, run_dir, init_from=init_from, callbacks=callbacks)

    def _upload_finals(
        self, uploader: Uploader, run_dir: Path, end: EndEvent, spec: TrainingSpec
    ) -> list[UploadedArtifact]:
        """Upload the release ``.pt``, its ``.safetensors`` and the run's logs (a failure fails the job)."""
        items: list[ArtifactFile] = []
        if end.final_path is not None:
            items.append(ArtifactFile(end.final_path, "hypernetwork", end.step))
            safetensors = end.final_path.with_suffix(".safetensors")
            if not safetensors.exists():
                _write_safetensors(end.final_path, safetensors)
            items.append(ArtifactFile(safetensors, "hypernetwork_safetensors", end.step))
        for name, kind in FINAL_OUTPUTS:
            if (run_dir / name).exists():
                items.append(ArtifactFile(run_dir / name, kind, end.step))
        uploaded = []
        for item in items:
            result = uploader.upload(item, attempts=10)
            if result is None:
                raise HyperforgeError(f"could not upload {item.path.name}", code="artifact_upload_failed")
            uploaded.append(result)
        return uploaded

    def _finish(
        self,
        writer: LeasedWriter,
        reporter: Reporter,
        status: str,
        event_type: str,
        data: dict[str, Any],
        *,
        artifacts: list[UploadedArtifact] | None = None,
        progress: dict[str, Any] | None = None,
        error: tuple[str, str] | None = None,
    ) -> None:
        """Write the last events and the final status in one lease-checked transaction (retried)."""
        events = reporter.take_pending()
        if artifacts:
            events.append(PendingEvent("", {}, tuple(artifacts)))
        retry_db(
            lambda: writer.finish(status, event_type, data, progress=progress, events=events, error=error),
            patience=FINALISE_PATIENCE_S,
            what=f"finalising as {status}",
        )


def _write_safetensors(pt: Path, target: Path) -> None:
    """The release file in the ``.safetensors`` layout (core's converter)."""
    from core.hypernetwork.fileformat import load_pt
    from core.hypernetwork.fileformat_safetensors import save_safetensors

    save_safetensors(load_pt(pt), target, release=True)


_process_db: Database | None = None


def process_database(settings: Settings) -> Database:
    """This process's database handle (one per pool process; created on first use)."""
    global _process_db
    if _process_db is None:
        url = db_url_for_worker(settings.effective_database_url)
        _process_db = Database.from_url(url, pool_size=3, max_overflow=2)
    return _process_db


def warm_up_parent() -> None:
    """In the Celery parent, before it forks pool processes: connect once and compile the claim's SQL.

    A forked child inherits the engine's dialect initialisation and compiled-statement cache, so
    its first claim costs one round trip per statement instead of ~150 ms of first-use setup.
    """
    settings = get_settings()
    db = process_database(settings)
    try:
        with db.session() as session:
            JobRepository(session).claim("job_" + "0" * 26, "warm-up", settings.lease_seconds)
            JobRepository(session).get("job_" + "0" * 26)
            session.rollback()
    except Exception as exc:  # the database is not up yet: children warm up on their first job
        log.warning("database warm-up skipped (%s)", exc)
    db.engine.dispose(close=False)


def warm_up_child() -> None:
    """In a freshly forked pool process: drop the parent's connections, open one of our own."""
    db = process_database(get_settings())
    db.engine.dispose(close=False)  # never use a socket the parent opened
    try:
        with db.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except Exception as exc:
        log.warning("database connection at pool start failed (%s)", exc)


def run_job(job_id: str) -> str:
    """Run one delivery of ``job_id`` in this process (the Celery task calls this).

    SIGTERM (Celery cancelling the task, a pool shutdown) makes the run stop at the next step with
    a checkpoint and hand the job back; a second SIGTERM exits at once.
    """
    settings = get_settings()
    db = process_database(settings)
    job_run = JobRun(settings, db, lambda: build_store(settings), job_id, worker_identity())
    in_main = threading.current_thread() is threading.main_thread()

    def on_sigterm(_signum: int, _frame: object) -> None:
        if job_run._interrupted:
            raise SystemExit(143)
        log.warning("SIGTERM: %s stops at its next step and goes back to the queue", job_id)
        job_run.interrupt()

    previous = signal.signal(signal.SIGTERM, on_sigterm) if in_main else None
    try:
        return job_run.run()
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)
