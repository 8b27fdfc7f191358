"""The worker side's ``hyperforge`` subcommands: ``worker``, ``local``, ``demo`` and ``jobs ...``.

Registered through the ``hyperforge.commands`` entry-point group (``worker = "worker.cli:register"``),
so core never imports the service. Heavy imports happen inside the command functions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"


def register(subparsers: Any) -> None:
    """Add ``worker``, ``local``, ``demo`` and ``jobs`` to the ``hyperforge`` parser."""
    p = subparsers.add_parser("worker", help="run a Celery worker that trains queued jobs")
    p.add_argument("--queues", default="training,default", help="comma-separated queues to consume")
    p.add_argument("--concurrency", type=int, default=1, help="jobs run at once (one process each)")
    p.add_argument("--hostname", default=None, help="Celery node name (default: worker@<host>-<pid>)")
    p.add_argument("--no-dispatch", action="store_true", help="do not drain the API outbox in this worker")
    p.add_argument("--no-reconcile", action="store_true", help="do not run the reconciler in this worker")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=_worker)

    p = subparsers.add_parser("local", help="API + worker + embedded broker + SQLite in one command")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--data-dir", type=Path, default=Path(".hyperforge"))
    p.set_defaults(func=_local)

    p = subparsers.add_parser(
        "demo", help="train the demo dataset on a running service and download the result"
    )
    _client_args(p)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path("hyperforge-demo"))
    p.add_argument("--poll", action="store_true", help="poll for events instead of streaming them")
    p.set_defaults(func=_demo)

    jobs = subparsers.add_parser("jobs", help="submit, inspect, follow, cancel and download jobs")
    jsub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    p = jsub.add_parser("submit", help="submit a training spec (JSON file, '-' for stdin)")
    _client_args(p)
    p.add_argument("spec", help="path of a JSON training spec, or - for stdin")
    p.add_argument("--idempotency-key", default=None)
    p.add_argument("--watch", action="store_true", help="follow the job until it ends")
    p.set_defaults(func=_jobs_submit)
    p = jsub.add_parser("status", help="print a job as JSON")
    _client_args(p)
    p.add_argument("job_id")
    p.set_defaults(func=_jobs_status)
    p = jsub.add_parser("watch", help="follow a job's progress until it ends")
    _client_args(p)
    p.add_argument("job_id")
    p.add_argument("--poll", action="store_true")
    p.set_defaults(func=_jobs_watch)
    p = jsub.add_parser("cancel", help="cancel a job")
    _client_args(p)
    p.add_argument("job_id")
    p.add_argument("--save-checkpoint", action="store_true")
    p.set_defaults(func=_jobs_cancel)
    p = jsub.add_parser("download", help="download a job's artifacts")
    _client_args(p)
    p.add_argument("job_id")
    p.add_argument("--out", type=Path, default=None, help="folder (default: ./<job id>)")
    p.add_argument("--kind", action="append", default=None, help="only these kinds (repeatable)")
    p.set_defaults(func=_jobs_download)


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get("HYPERFORGE_URL", DEFAULT_URL))
    p.add_argument("--api-key", default=os.environ.get("HYPERFORGE_API_KEY"))


def _api_key(args: argparse.Namespace) -> str:
    """The key from --api-key, $HYPERFORGE_API_KEY, or local mode's ``.hyperforge/dev-api-key``."""
    if args.api_key:
        return str(args.api_key)
    local = Path(".hyperforge") / "dev-api-key"
    if local.exists():
        return local.read_text(encoding="utf-8").strip()
    from core.errors import HyperforgeError

    raise HyperforgeError("no API key: pass --api-key or set HYPERFORGE_API_KEY", code="missing_api_key")


def _worker(args: argparse.Namespace) -> int:
    from worker.process import run_worker

    return run_worker(
        queues=[q.strip() for q in args.queues.split(",") if q.strip()],
        concurrency=args.concurrency,
        hostname=args.hostname,
        dispatch=not args.no_dispatch,
        reconcile=not args.no_reconcile,
        loglevel=args.loglevel,
    )


def _local(args: argparse.Namespace) -> int:
    from worker.local import run_local

    return run_local(port=args.port, host=args.host, data_dir=args.data_dir)


def _demo(args: argparse.Namespace) -> int:
    from worker.demo import run_demo

    return run_demo(url=args.url, api_key=_api_key(args), steps=args.steps, out=args.out, poll=args.poll)


def _jobs_submit(args: argparse.Namespace) -> int:
    from worker.client import Client

    text = sys.stdin.read() if args.spec == "-" else Path(args.spec).read_text(encoding="utf-8")
    with Client(args.url, _api_key(args)) as client:
        job = client.submit_job(json.loads(text), idempotency_key=args.idempotency_key)
        print(json.dumps(job, indent=2))
        if args.watch:
            from worker.demo import follow

            return 0 if follow(client, job["id"], poll=False)["status"] == "succeeded" else 1
    return 0


def _jobs_status(args: argparse.Namespace) -> int:
    from worker.client import Client

    with Client(args.url, _api_key(args)) as client:
        print(json.dumps(client.get_job(args.job_id), indent=2))
    return 0


def _jobs_watch(args: argparse.Namespace) -> int:
    from worker.client import Client
    from worker.demo import follow

    with Client(args.url, _api_key(args)) as client:
        job = follow(client, args.job_id, poll=args.poll)
    print(f"{job['id']}: {job['status']}")
    return 0 if job["status"] == "succeeded" else 1


def _jobs_cancel(args: argparse.Namespace) -> int:
    from worker.client import Client

    with Client(args.url, _api_key(args)) as client:
        job = client.cancel_job(args.job_id, save_checkpoint=args.save_checkpoint)
    print(f"{job['id']}: {job['status']}")
    return 0


def _jobs_download(args: argparse.Namespace) -> int:
    from worker.client import Client

    out = args.out or Path(args.job_id)
    with Client(args.url, _api_key(args)) as client:
        for path in client.download_all(args.job_id, out, kinds=args.kind):
            print(path)
    return 0
