"""Training throughput with the worker's reporter attached vs core alone, on the same run.

The same tiny-model run (same spec and seed) is trained alternately with only a timing callback
(core alone) and with the timing callback plus the real ``Reporter`` (progress flushes to Postgres
under a lease, checkpoint uploads to a filesystem store, a lease heartbeat), in pairs of alternating
order. Throughput is measured three ways: steps per wall-clock second over the whole run, per
CPU-second of the whole process (every thread, so the reporter's flusher, uploader and heartbeat are
charged), and from the median step-to-step interval (callbacks, saving and the reporter's threads'
GIL use included). On this shared 2-core machine whole-run rates swing several-fold with other
processes' load, so the headline ratio is the median-interval one; the other two are printed too.
Ends by printing ``{"reporter_throughput_ratio": ...}``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.db.engine import Database  # noqa: E402
from api.db.migrate import upgrade  # noqa: E402
from api.db.models import Dataset, Job  # noqa: E402
from api.db.repositories.base_models import BaseModelRepository  # noqa: E402
from api.db.repositories.datasets import DatasetRepository  # noqa: E402
from api.db.repositories.jobs import JobRepository  # noqa: E402
from api.db.repositories.tenants import TenantRepository  # noqa: E402
from api.storage import FilesystemObjectStore  # noqa: E402
from core.data.demo import write_demo_dataset  # noqa: E402
from core.models.tiny import make_tiny_model  # noqa: E402
from core.spec import parse_spec  # noqa: E402
from core.training.callbacks import Callback, Control, StepEvent  # noqa: E402
from core.training.run import start_run  # noqa: E402
from worker.lease import JobLease, LeaseKeeper  # noqa: E402
from worker.reporter import Reporter  # noqa: E402
from worker.runner import LeasedWriter  # noqa: E402
from worker.uploads import Uploader  # noqa: E402

STEPS = int(os.environ.get("BENCH_STEPS", "240"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
SAVE_EVERY = int(os.environ.get("BENCH_SAVE_EVERY", "80"))
DATABASE_URL = os.environ.get(
    "HYPERFORGE_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BENCH_DB = "hf_bench_reporter"


class Timing(Callback):
    """Wall and process CPU time from the end of step 1 to the end of the last step."""

    def __init__(self) -> None:
        self.first: tuple[float, float] | None = None
        self.last: tuple[float, float] | None = None
        self.steps = 0
        self.intervals: list[float] = []

    def on_step(self, event: StepEvent, control: Control) -> None:
        now = (time.perf_counter(), time.process_time())  # process time: every thread, ours included
        if self.first is None:
            self.first = now
        else:
            assert self.last is not None
            self.intervals.append(now[0] - self.last[0])
        self.last, self.steps = now, event.step

    def typical_rate(self) -> float:
        """Steps per second from the median step-to-step interval (callbacks, saving and the
        reporter's threads included), robust to bursts of other processes' load."""
        return 1.0 / statistics.median(self.intervals)

    def rate(self) -> float:
        """Steps per wall-clock second."""
        assert self.first is not None and self.last is not None
        return (self.steps - 1) / (self.last[0] - self.first[0])

    def cpu_rate(self) -> float:
        """Steps per CPU-second of the whole process (the training thread plus the reporter's)."""
        assert self.first is not None and self.last is not None
        return (self.steps - 1) / (self.last[1] - self.first[1])


def _database() -> tuple[Database, str]:
    admin = DATABASE_URL.replace("+psycopg", "").rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    url = DATABASE_URL.rsplit("/", 1)[0] + "/" + BENCH_DB
    upgrade(url)
    return Database.from_url(url), admin


_COUNTER = iter(range(1_000_000))


def job_counter() -> int:
    """A fresh number per benchmark round (model names are unique)."""
    return next(_COUNTER)


def _leased_job(db: Database, model_dir: Path, spec: dict[str, object]) -> tuple[JobLease, str]:
    with db.session() as s:
        tenant = TenantRepository(s).add("bench")
        model = BaseModelRepository(s).add(
            name=f"tiny-{job_counter()}",
            arch="sd1",
            format="diffusers",
            uri=str(model_dir),
            sha256_short=None,
        )
        ds = DatasetRepository(s).add(
            Dataset(tenant_id=tenant.id, name="d", status="ready", storage_prefix=f"tenants/{tenant.id}/d/")
        )
        job = JobRepository(s).add(
            Job(
                tenant_id=tenant.id,
                name="bench",
                dataset_id=ds.id,
                base_model_id=model.id,
                spec=spec,
                progress={},
            )
        )
        attempt = JobRepository(s).claim(job.id, "bench-worker", 3600)
        assert attempt is not None
        s.commit()
        return JobLease(job.id, "bench-worker", attempt, 3600), tenant.id


def main() -> int:
    """Alternate core-alone and reporter runs; print the median throughput ratio."""
    tmp = Path(tempfile.mkdtemp(prefix="hf-bench-reporter-"))
    model_dir = make_tiny_model(tmp / "model")
    write_demo_dataset(tmp / "data", count=8, size=64)
    spec_data = {
        "name": "bench",
        "training": {"learn_rate": "1e-4", "steps": STEPS, "width": 64, "height": 64, "seed": 3},
        "checkpoints": {"save_every": SAVE_EVERY, "save_optimizer_state": True},
        "samples": {
            "every": 0,
            "prompts": [{"prompt": "a circle", "steps": 1, "width": 64, "height": 64}],
            "strengths": [1.0],
        },
    }
    spec = parse_spec(spec_data)
    db, admin = _database()
    store = FilesystemObjectStore(tmp / "objects")
    ratios, cpu_ratios, typical_ratios, alone_rates, reporter_rates = [], [], [], [], []
    try:
        # One unmeasured run warms caches up; then pairs in alternating order, so load that drifts
        # over time (this machine is shared) favours neither side; the median pair ratio is reported.
        start_run(spec, model_dir, tmp / "data", tmp / "warm-up", callbacks=[Timing()])
        for r in range(ROUNDS):
            alone = Timing()
            timed = Timing()

            def run_alone(r: int = r, alone: Timing = alone) -> None:
                start_run(spec, model_dir, tmp / "data", tmp / f"alone-{r}", callbacks=[alone])

            def run_reporter(r: int = r, timed: Timing = timed) -> None:
                lease, tenant_id = _leased_job(db, model_dir, spec_data)
                uploader = Uploader(store, tenant_id, lease.job_id)
                writer = LeasedWriter(db, lease, tenant_id)
                reporter = Reporter(writer, uploader, total_steps=STEPS, samples_per_step=1)
                keeper = LeaseKeeper(db, lease, on_lost=lambda: None, on_cancel=lambda _s: None).start()
                reporter.start()
                try:
                    out = tmp / f"reporter-{r}"
                    start_run(spec, model_dir, tmp / "data", out, callbacks=[timed, reporter])
                finally:
                    reporter.close()
                    uploader.drain(60)
                    uploader.close()
                    keeper.stop()

            for run in (run_alone, run_reporter) if r % 2 == 0 else (run_reporter, run_alone):
                run()
            alone_rates.append(alone.rate())
            reporter_rates.append(timed.rate())
            ratios.append(timed.rate() / alone.rate())
            cpu_ratios.append(timed.cpu_rate() / alone.cpu_rate())
            typical_ratios.append(timed.typical_rate() / alone.typical_rate())
            print(
                f"round {r}: core alone {alone.rate():.2f} steps/s ({alone.cpu_rate():.2f}/cpu-s), "
                f"with reporter {timed.rate():.2f} steps/s ({timed.cpu_rate():.2f}/cpu-s); "
                f"typical {alone.typical_rate():.2f} vs {timed.typical_rate():.2f} steps/s",
                flush=True,
            )
    finally:
        db.dispose()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
    print(
        json.dumps(
            {
                # From the median step interval (see Timing.typical_rate): on this shared 2-core
                # machine whole-run rates swing several-fold with other processes' load.
                "reporter_throughput_ratio": round(statistics.median(typical_ratios), 4),
                "whole_run_wall_ratio": round(statistics.median(ratios), 4),
                "whole_run_cpu_ratio": round(statistics.median(cpu_ratios), 4),
                "core_steps_per_second": round(statistics.median(alone_rates), 3),
                "reporter_steps_per_second": round(statistics.median(reporter_rates), 3),
                "steps": STEPS,
                "save_every": SAVE_EVERY,
                "rounds": ROUNDS,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
